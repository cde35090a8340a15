"""Shared fixtures: settings on a temporary storage root, real dcmtk peers, the shared test data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, text

from immunode.config import Settings, parse_settings
from immunode.service import Node
from pipelines.builtin import BUILTIN
from pipelines.registry import Registry

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
STS_002 = SHARED_DATA / "sts_002"
SUV_DRO = SHARED_DATA / "suv_dro"


def _worker_database(url: str | None) -> str | None:
    """Under pytest-xdist each worker process gets a database of its own on the test server (`<name>_gw0`, ...),
    created when missing: the PostgreSQL tests reset their database, which must not be another worker's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if url is None or not worker:
        return url
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{worker}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}) is None:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


POSTGRES_URL = _worker_database(os.environ.get("IMMUNODE_TEST_DATABASE_URL"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout_s: float = 60.0, interval_s: float = 0.2) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (the test command installs dcmtk and dicom3tools)")
    return path


def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """Commands run in-process configure logging as entry points do; their handlers point at this test's
    captured stream, which is closed afterwards, so the root logger is put back after each test."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


DATABASE_KINDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Index tests run on SQLite, and on PostgreSQL when IMMUNODE_TEST_DATABASE_URL is set."""
    if request.param == "postgresql":
        reset_postgres(POSTGRES_URL)
        return POSTGRES_URL
    return f"sqlite:///{tmp_path / 'index.sqlite3'}"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def factory(database_url: str | None = None, registry: Registry = BUILTIN, **sections: dict) -> Settings:
        data: dict = {
            "node": {"ae_title": "IMMUNODE", "host": "127.0.0.1", "port": free_port()},
            "peers": {
                "allowed": [
                    {"ae_title": "STORESCU", "host": "127.0.0.1"},
                    {"ae_title": "ECHOSCU", "host": "127.0.0.1"},
                    {"ae_title": "TESTSCU", "host": "127.0.0.1"},
                ]
            },
            "storage": {"root": str(tmp_path / "store"), "min_free_mb": 0},
            "database": {"url": database_url},
            # PET only unless a test asks for more (the CT pipeline has its own tests).
            "routing": {
                "study_stable_s": 1.0,
                "poll_interval_s": 0.2,
                "rules": [{"name": "pet-lesions", "pipeline": "pet_quant", "series": {"modality": "PT"}}],
            },
            "workers": {"processes": 1, "job_cpu_limit_s": 300},
            "dispatch": {"max_attempts": 4, "backoff_initial_s": 0.5, "backoff_max_s": 2.0, "timeout_s": 10},
            "logging": {"level": "INFO"},
            "monitoring": {"port": 0},  # a free port: tests start many nodes
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_settings(data, "test settings", registry)

    return factory


def dcmtk_environment() -> dict[str, str]:
    """The environment for dcmtk's tools: `TCP_NODELAY=1` (dcmtk honours it; without it dcmtk leaves Nagle's
    algorithm on, and on loopback each small instance storescu sends waits for the receiver's 40 ms delayed ACK,
    as benchmarks/ingest.py found)."""
    return {**os.environ, "TCP_NODELAY": "1"}


class StoreSCP:
    """dcmtk storescp playing the PACS that receives results."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        self.folder, self.port, self.ae_title = folder, port, ae_title
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                require_tool("storescp"),
                "--aetitle",
                self.ae_title,
                "--output-directory",
                str(self.folder),
                "--promiscuous",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dcmtk_environment(),
        )
        wait_until(lambda: _port_open(self.port), 10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def received(self) -> list[Path]:
        """Files completely written: storescp writes under the final name, so a file still being written
        does not read yet."""
        complete = []
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            try:
                pydicom.dcmread(path)
            except Exception:  # partially written: not received yet
                continue
            complete.append(path)
        return complete


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs", free_port())
    scp.start()
    yield scp
    scp.stop()


def storescu(
    port: int,
    files: list[Path] | Path,
    calling: str = "STORESCU",
    called: str = "IMMUNODE",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """dcmtk storescu playing the scanner."""
    targets = [str(f) for f in (files if isinstance(files, list) else [files])]
    return subprocess.run(
        [require_tool("storescu"), "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port), *targets],
        capture_output=True,
        text=True,
        timeout=300,
        env=dcmtk_environment(),
    )


def dciodvfy_errors(path: Path) -> list[str]:
    completed = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True)
    return [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def torch_threads_restored() -> Iterator[None]:
    """Training sets one thread and deterministic algorithms; later tests get the defaults back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def start_node():
    nodes: list = []

    def starter(settings: Settings) -> Node:
        node = Node(settings)
        node.start()
        nodes.append(node)
        return node

    yield starter
    for node in nodes:
        node.stop()


ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """A real PACS receiving results: Orthanc (Debian package `orthanc`), its REST API on loopback; with `dicomweb`,
    its DICOMweb plugin (Debian package `orthanc-dicomweb`) serves QIDO-RS, WADO-RS and STOW-RS under /dicom-web
    and can itself STOW a study to another DICOMweb server."""

    def __init__(
        self, folder: Path, dicom_port: int, http_port: int, ae_title: str = "ORTHANC", dicomweb: bool = False
    ) -> None:
        self.folder, self.dicom_port, self.http_port, self.ae_title = folder, dicom_port, http_port, ae_title
        self.dicomweb = dicomweb
        self.process: subprocess.Popen | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> None:
        import json

        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(
            json.dumps(
                {
                    "Name": "immunode-test-pacs",
                    "StorageDirectory": str(self.folder / "storage"),
                    "IndexDirectory": str(self.folder / "storage"),
                    "DicomAet": self.ae_title,
                    "DicomPort": self.dicom_port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "DicomAlwaysAllowStore": True,
                    "Plugins": [str(self._plugin())] if self.dicomweb else [],
                    "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/", "Servers": {}},
                }
            )
        )
        self.process = subprocess.Popen(
            [require_tool("Orthanc"), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: self._get("/system") is not None, 30)

    def _get(self, path: str):  # parsed JSON, or None when Orthanc does not answer (yet)
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def post(self, path: str, body: str, timeout_s: float = 10):
        import json
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    @staticmethod
    def _plugin() -> Path:
        if not ORTHANC_DICOMWEB_PLUGIN.exists():
            pytest.fail("Orthanc's DICOMweb plugin is not installed (scripts/setup.sh installs orthanc-dicomweb)")
        return ORTHANC_DICOMWEB_PLUGIN

    def upload(self, paths: list[Path]) -> str:
        """Store files through the REST API; returns Orthanc's id of their (last) study."""
        import json
        import urllib.request

        study = ""
        for path in paths:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.http_port}/instances", data=path.read_bytes(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                study = json.loads(response.read())["ParentStudy"]
        return study

    def add_dicomweb_server(self, name: str, url: str, username: str, password: str) -> None:
        import json
        import urllib.request

        body = json.dumps({"Url": url, "Username": username, "Password": password}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/dicom-web/servers/{name}", data=body, method="PUT"
        )
        urllib.request.urlopen(request, timeout=10).close()

    def series_of_study(self, study_instance_uid: str) -> list[dict]:
        """Main DICOM tags of every series Orthanc holds under this Study Instance UID."""
        found = self.post("/tools/lookup", study_instance_uid)
        studies = [item["ID"] for item in found if item.get("Type") == "Study"]
        if not studies:
            return []
        return [series["MainDicomTags"] for series in self._get(f"/studies/{studies[0]}/series") or []]

    def instances_of_series(self, series_instance_uid: str) -> list[dict]:
        found = self.post("/tools/lookup", series_instance_uid)
        series = [item["ID"] for item in found if item.get("Type") == "Series"]
        return self._get(f"/series/{series[0]}/instances") if series else []

    def file(self, instance_id: str) -> bytes:
        """The DICOM file Orthanc stored for an instance (its REST id)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file", timeout=10) as f:
            return f.read()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin."""
    pacs = Orthanc(tmp_path / "orthanc-dicomweb", free_port(), free_port(), dicomweb=True)
    pacs.start()
    yield pacs
    pacs.stop()
def serve(tmp_path: Path, name: str, settings: Settings) -> subprocess.Popen:
    """`immunode serve` as a service runs it, in its own process (its log in `tmp_path/<name>.log`); returns once
    its SCP listens on `settings.node.port`."""
    import sys

    import yaml

    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    log = (tmp_path / f"{name}.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "immunode.cli", "--config", str(config), "serve"], cwd=REPO, stdout=log, stderr=log
    )
    log.close()

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"immunode serve ({name}) exited: {(tmp_path / f'{name}.log').read_text()[-3000:]}")
        return _port_open(settings.node.port)

    wait_until(listening, 120)
    return process


class PostgresServer:
    """A PostgreSQL server of the test's own, which the test stops and starts (an index outage): initdb in a
    folder of /tmp (the server's user must reach its socket there), a Unix socket only."""

    def __init__(self) -> None:
        import tempfile

        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not bins:
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh --with-postgres installs it)")
        self.bin = bins[-1]
        self.folder = Path(tempfile.mkdtemp(prefix="immunode-pg-"))
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@/immunode?host={self.folder}&port={self.port}"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self._run(f"{self.bin}/initdb -D {self.folder}/data -A trust -U postgres")
        self.start()
        self._run(f"{self.bin}/createdb -h {self.folder} -p {self.port} -U postgres immunode")

    def _run(self, command: str, check: bool = True) -> None:
        argv = ["su", "postgres", "-s", "/bin/bash", "-c", command] if os.geteuid() == 0 else ["bash", "-c", command]
        subprocess.run(argv, check=check, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=''"
        self._run(f'{self.bin}/pg_ctl -D {self.folder}/data -o "{options}" -l {self.folder}/log -w start')

    def stop(self) -> None:
        """A fast shutdown: open connections are ended, as when the server goes away."""
        self._run(f"{self.bin}/pg_ctl -D {self.folder}/data -m fast -w stop")

    def remove(self) -> None:
        self._run(f"{self.bin}/pg_ctl -D {self.folder}/data -m immediate stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    if POSTGRES_URL is None:
        pytest.skip("needs PostgreSQL (IMMUNODE_TEST_DATABASE_URL, set by scripts/test.sh)")
    server = PostgresServer()
    yield server
    server.remove()
