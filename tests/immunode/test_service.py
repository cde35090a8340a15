"""`immunode serve` as a service runs it: SIGTERM stops it within seconds, the job it was running queued to
resume (and it does, at the next start); after SIGKILL of the node no worker or radiomics process of its
survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import select

from common.states import JobState
from storage.database import Database
from storage.schema import Job
from tests.conftest import REPO, free_port, storescu, wait_until
from tests.synthetic_ct import BASELINE_LESIONS, write_ct_study

CT_RULES = {"rules": [{"name": "ct-radiomics", "pipeline": "ct_radiomics", "series": {"modality": "CT"}}]}


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serve(tmp_path: Path, make_settings) -> tuple[subprocess.Popen, int, Database]:
    port = free_port()
    settings = make_settings(
        node={"port": port},
        routing={**CT_RULES, "study_stable_s": 0.5, "poll_interval_s": 0.5},
        pipelines={"ct_radiomics": {"extraction_processes": 2, "per_lesion_features": True}},
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    process = subprocess.Popen(
        [sys.executable, "-m", "immunode.cli", "--config", str(config), "serve"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: (
            subprocess.run(["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0
        ),
        60,
    )
    return process, port, Database(settings.database_url, migrate=False)


def _job(database: Database) -> Job | None:
    with database.session() as session:
        return session.scalar(select(Job))


def _running_with_extraction(process: subprocess.Popen, database: Database) -> bool:
    job = _job(database)
    # The worker and the radiomics processes it started: a worker with children of its own.
    return bool(job is not None and job.state is JobState.RUNNING and len(_descendants(process.pid)) >= 4)


def test_sigterm_stops_within_seconds_and_the_job_resumes(tmp_path: Path, make_settings) -> None:
    study = write_ct_study(tmp_path / "ct", BASELINE_LESIONS, "20260105")
    process, port, database = _serve(tmp_path, make_settings)
    try:
        assert storescu(port, list(study.ct_files) + [study.rtstruct]).returncode == 0
        wait_until(lambda: _running_with_extraction(process, database), 120, 0.1)
        workers = _descendants(process.pid)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        assert time.monotonic() - started < 8
        wait_until(lambda: not any(_alive(pid) for pid in workers), 5)
        job = _job(database)
        assert job.state is JobState.PENDING and job.attempts == 0  # queued to resume, the attempt returned
        process, port, database = _serve(tmp_path, make_settings)  # the next start takes it up
        job = wait_until(lambda: (j := _job(database)) and j.state is JobState.SUCCEEDED and j, 180)
        assert job.attempts == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        database.dispose()


def test_no_worker_or_extraction_process_outlives_a_killed_node(tmp_path: Path, make_settings) -> None:
    study = write_ct_study(tmp_path / "ct", BASELINE_LESIONS, "20260105")
    process, port, database = _serve(tmp_path, make_settings)
    try:
        assert storescu(port, list(study.ct_files) + [study.rtstruct]).returncode == 0
        wait_until(lambda: _running_with_extraction(process, database), 120, 0.1)
        orphans = _descendants(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in orphans), 10)
    finally:
        if process.poll() is None:
            process.kill()
        database.dispose()
