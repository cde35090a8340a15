"""The deployment files. Docker cannot run here: the compose file, the image and its configuration are checked
instead (two nodes, PostgreSQL, a Dask scheduler with two workers and Orthanc; the image's health check asks the
liveness endpoint; the container accepts the peers its configuration lists). The set-up scripts run against
stand-ins that record what they are asked to install; the systemd unit goes through systemd's own parser."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from immunode.config import parse_settings
from tests.conftest import REPO


def test_the_compose_file_and_the_node_configuration() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "dask-scheduler", "dask-worker-1", "dask-worker-2", "node1", "node2", "orthanc"} <= set(
        services
    )
    # Nodes and workers mount the same storage root.
    assert "store:/var/lib/immunode" in services["node1"]["volumes"]
    assert "store:/var/lib/immunode" in services["dask-worker-2"]["volumes"]
    settings = parse_settings(yaml.safe_load((REPO / "deploy" / "node.yaml").read_text()), "deploy/node.yaml")
    assert settings.workers.engine == "dask" and settings.database_url.startswith("postgresql")
    assert settings.monitoring.host == "0.0.0.0" and settings.monitoring.username
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    for package in ("common", "research", "dicom_node", "pipelines", "models", "storage", "immunode"):
        assert f"COPY {package} ./{package}" in dockerfile


# --- scripts/serve.sh and scripts/setup.sh: a second start installs nothing -----------------------------------

SOURCES = ("common", "dicom_node", "immunode", "models", "pipelines", "research", "storage")


def _stand_in(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path: Path):
    """The scripts and pyproject.toml in a checkout of their own, with stand-ins that record what they are asked
    to do: dpkg (a package is missing while its name is in $MISSING), apt-get, and the virtual environment's
    python (pip) and immunode."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "serve.sh"):
        shutil.copy2(REPO / "scripts" / name, repo / "scripts" / name)
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")
    for package in SOURCES:
        (repo / package).mkdir()
        (repo / package / "__init__.py").write_text("")
    calls = tmp_path / "calls.log"
    tools = tmp_path / "bin"
    tools.mkdir()
    _stand_in(tools / "dpkg", f'echo "dpkg $*" >> {calls}\ncase " $MISSING " in *" $2 "*) exit 1;; esac\n')
    _stand_in(tools / "apt-get", f'echo "apt-get $*" >> {calls}\n')
    _stand_in(tools / "sudo", '"$@"\n')
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    _stand_in(venv / "python", f'echo "python $*" >> {calls}\n')
    _stand_in(venv / "immunode", f'echo "immunode $*" >> {calls}\n')

    def serve(missing: str = "") -> list[str]:
        calls.unlink(missing_ok=True)
        env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "MISSING": missing}
        subprocess.run(["bash", str(repo / "scripts" / "serve.sh"), "--config", "x.yaml"], env=env, check=True)
        return calls.read_text().splitlines()

    return repo, serve


def test_serve_sets_up_only_what_is_missing(checkout) -> None:
    repo, serve = checkout
    first = serve()
    pip = [c for c in first if c.startswith("python -m pip")]
    assert pip == [
        "python -m pip install -q --upgrade pip",
        "python -m pip install -q torch==2.13.0",
        "python -m pip install -q .[test]",
    ]
    assert not any(c.startswith("apt-get") for c in first) and first[-1] == "immunode serve --config x.yaml"
    stamp = repo / ".venv" / ".immunode-setup"
    assert stamp.exists()
    # The second start: the Debian packages are asked after (dpkg), nothing is installed.
    assert serve() == ["dpkg -s dcmtk", "dpkg -s dicom3tools", "immunode serve --config x.yaml"]
    # A source file changed (a pull, an edit): the package alone is installed again, not its dependencies.
    set_up = stamp.stat().st_mtime - 60
    os.utime(stamp, (set_up, set_up))
    os.utime(repo / "storage" / "__init__.py", (set_up + 30, set_up + 30))
    assert [c for c in serve() if c.startswith("python")] == ["python -m pip install -q --no-deps ."]
    assert [c for c in serve() if c.startswith("python")] == []
    # pyproject.toml changed (a dependency): the full install again.
    with open(repo / "pyproject.toml", "a") as handle:
        handle.write("\n# a new dependency\n")
    assert len([c for c in serve() if c.startswith("python -m pip")]) == 3
    # A Debian package missing: apt-get installs it (and only it); pip is not run.
    again = serve(missing="dicom3tools")
    assert "apt-get install -y -qq --no-install-recommends dicom3tools" in again
    assert not any(c.startswith("python") for c in again)


# --- the systemd unit ------------------------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((REPO / "deploy" / "immunode.service").read_text())
    return unit


def test_the_systemd_unit_runs_serve_as_its_own_user_hardened(tmp_path: Path) -> None:
    from immunode.cli import build_parser

    service = _unit()["Service"]
    assert service["User"] == "immunode" and service["Group"] == "immunode"
    command = service["ExecStart"].split()
    assert command[0] == "/opt/immunode/.venv/bin/immunode"
    parsed = build_parser().parse_args(command[1:])
    assert parsed.config == "/etc/immunode/config.yaml" and parsed.handler.__name__ == "cmd_serve"
    assert service["StateDirectory"] == "immunode" and service["ReadWritePaths"] == "/var/lib/immunode"
    assert service["RestartPreventExitStatus"] == "2" and service["KillSignal"] == "SIGTERM"
    hardening = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "SystemCallFilter": "@system-service",
        "UMask": "0077",
    }
    assert {key: service.get(key) for key in hardening} == hardening
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # systemd's own parser: every line understood (the binary pointed at one that exists here).
    unit = tmp_path / "immunode.service"
    unit.write_text((REPO / "deploy" / "immunode.service").read_text().replace(command[0], "/bin/true"))
    checked = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr


# --- the container ---------------------------------------------------------------------------------------------


def test_the_container_accepts_the_peers_its_configuration_lists() -> None:
    from dicom_node.scp import peer_allowed
    from immunode.startup import check_startup

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY deploy/container.yaml /etc/immunode/config.yaml" in dockerfile
    assert "ENV IMMUNODE_CONFIG=/etc/immunode/config.yaml" in dockerfile
    shipped = yaml.safe_load((REPO / "deploy" / "container.yaml").read_text())
    image = parse_settings(shipped, "deploy/container.yaml")
    assert image.storage.root.as_posix() == "/var/lib/immunode" and image.node.host == "0.0.0.0"
    assert image.peers.allowed == [] and not image.peers.accept_any
    assert any("every association is rejected" in w for w in check_startup(image, ports=False).warnings)
    # Filled in as the file's comments and docs/operations.md say: a remote scanner keeps its own address through
    # the published port; storescu on the Docker host arrives from the bridge's gateway.
    shipped["peers"]["allowed"] = [
        {"ae_title": "SCANNER", "host": "10.1.2.0/24"},
        {"ae_title": "STORESCU", "host": "172.17.0.1"},
    ]
    filled = parse_settings(shipped, "node.yaml")
    assert peer_allowed(filled.peers, "SCANNER", "10.1.2.33") and peer_allowed(filled.peers, "STORESCU", "172.17.0.1")
    assert not peer_allowed(filled.peers, "SCANNER", "10.9.9.9")
    operations = (REPO / "docs" / "operations.md").read_text()
    assert "-v $PWD/node.yaml:/etc/immunode/config.yaml:ro immunode" in operations
