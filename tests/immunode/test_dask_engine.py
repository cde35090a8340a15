"""Analysis on a Dask distributed cluster: a real scheduler and two workers started as processes on loopback
(`dask scheduler`, `dask worker`, importing this working tree), the index on PostgreSQL and one storage root.
Jobs run there and their SR equals the local engine's; a worker killed while running a job has the job finished
by the other; an unreachable scheduler leaves jobs queued with the reason in the index (status)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
from sqlalchemy import select

from common.states import JobState
from storage.events import recent_events
from storage.schema import Job
from tests.conftest import POSTGRES_URL, REPO, StoreSCP, free_port, reset_postgres, storescu, wait_until
from tests.sr_content import sr_numbers
from tests.synthetic import DEFAULT_LESIONS, write_study

pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(POSTGRES_URL is None, reason="needs PostgreSQL (IMMUNODE_TEST_DATABASE_URL)")


class Cluster:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.folder = folder
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _start(self, name: str, arguments: list[str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        return subprocess.Popen([sys.executable, "-m", *arguments], cwd=REPO, env=self.env, stdout=log, stderr=log)

    def start(self, workers: int = 2) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scheduler = self._start(
            "scheduler",
            [
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dashboard-address",
                ":0",
            ],
        )
        for i in range(workers):
            self.workers.append(
                self._start(
                    f"worker{i}",
                    [
                        "distributed.cli.dask_worker",
                        self.address,
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--dashboard-address",
                        ":0",
                        "--name",
                        f"worker{i}",
                    ],
                )
            )
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            if process is not None:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def cluster(tmp_path: Path):
    started = Cluster(tmp_path / "cluster")
    started.start()
    yield started
    started.stop()


def _jobs(node) -> list[Job]:
    with node.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def test_jobs_run_on_the_cluster_like_on_the_local_engine(
    tmp_path: Path, make_settings, start_node, pacs: StoreSCP, cluster: Cluster
) -> None:
    reset_postgres(POSTGRES_URL)
    study = write_study(tmp_path / "scanner", shape_zyx=(24, 48, 48), lesions=DEFAULT_LESIONS[:1], patient_id="DASK-1")
    destinations = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    settings = make_settings(
        database_url=POSTGRES_URL,
        workers={"engine": "dask", "dask_scheduler": cluster.address},
        destinations=destinations,
    )
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    job = wait_until(lambda: (jobs := _jobs(node)) and jobs[0].state is JobState.SUCCEEDED and jobs[0], 180)
    assert job.attempts == 1
    reports = wait_until(lambda: [p for p in pacs.received() if hd.sr.srread(p).Modality == "SR"], 60)
    on_cluster = sr_numbers(hd.sr.srread(reports[0]).ContentSequence)
    node.stop()

    # The same study on the local engine (SQLite, another store) gives the same measurements.
    local = make_settings(node={"port": free_port()}, storage={"root": str(tmp_path / "local"), "min_free_mb": 0})
    local_node = start_node(local)
    assert storescu(local_node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    wait_until(lambda: (jobs := _jobs(local_node)) and jobs[0].state is JobState.SUCCEEDED, 180)
    with local_node.database.session() as session:
        from storage.schema import Output

        sr_path = next(o.path for o in session.scalars(select(Output)) if o.kind.value == "SR")
    on_local = sr_numbers(hd.sr.srread(Path(local.storage.root) / sr_path).ContentSequence)
    assert on_local.keys() == on_cluster.keys()
    for name, values in on_local.items():
        assert on_cluster[name] == pytest.approx(values, rel=1e-6), name


def test_a_killed_worker_hands_its_job_to_another(tmp_path: Path, make_settings, start_node, cluster: Cluster) -> None:
    reset_postgres(POSTGRES_URL)
    study = write_study(tmp_path / "scanner", shape_zyx=(60, 96, 96), lesions=DEFAULT_LESIONS, patient_id="DASK-2")
    settings = make_settings(database_url=POSTGRES_URL, workers={"engine": "dask", "dask_scheduler": cluster.address})
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    wait_until(lambda: (jobs := _jobs(node)) and jobs[0].state is JobState.RUNNING, 120, 0.05)
    from distributed import Client

    with Client(cluster.address, timeout=30) as client:
        processing = wait_until(lambda: {w: t for w, t in client.processing().items() if t}, 60, 0.05)
        busy_address = next(iter(processing))
        names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
    busy = cluster.workers[int(str(names[busy_address]).removeprefix("worker"))]
    os.kill(busy.pid, signal.SIGKILL)
    job = wait_until(lambda: (jobs := _jobs(node)) and jobs[0].state is JobState.SUCCEEDED and jobs[0], 300)
    assert job.attempts == 1  # the scheduler re-ran the task on the other worker; the index holds one result


def test_an_unreachable_scheduler_leaves_jobs_queued_with_the_reason(tmp_path: Path, make_settings, start_node) -> None:
    reset_postgres(POSTGRES_URL)
    study = write_study(tmp_path / "scanner", shape_zyx=(16, 40, 40), lesions=DEFAULT_LESIONS[:1], patient_id="DASK-3")
    dead = f"tcp://127.0.0.1:{free_port()}"
    settings = make_settings(
        database_url=POSTGRES_URL,
        workers={"engine": "dask", "dask_scheduler": dead, "dask_connect_timeout_s": 1},
    )
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files)).returncode == 0

    def reason() -> str:
        with node.database.session() as session:
            return next((e.message for e in recent_events(session, 20) if "unreachable" in e.message), "")

    message = wait_until(reason, 60)
    assert dead in message
    assert all(job.state is JobState.PENDING for job in _jobs(node))
