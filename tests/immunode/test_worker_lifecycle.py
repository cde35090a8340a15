"""The worker processes: none while the node is idle, started by the first routed job, returned after
`workers.idle_release_s` without a job; started with the node when `workers.warm_at_start` says so.

The node runs in this process (its worker pool's processes are this process's children); the study is a small
synthetic PET/CT sent by dcmtk storescu and analysed by the PET pipeline."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from common.states import JobState
from storage.database import Database
from storage.schema import Job
from tests.conftest import storescu, wait_until
from tests.immunode.test_service import _alive, _descendants
from tests.synthetic import write_study


def _workers() -> set[int]:
    """Live worker processes of this (the node's) process: spawned pool processes (not multiprocessing's
    resource tracker, which stays)."""
    found = set()
    for pid in _descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and _alive(pid):
            found.add(pid)
    return found


def _job_state(database: Database) -> JobState | None:
    with database.session() as session:
        job = session.scalar(select(Job))
        return job.state if job is not None else None


def test_an_idle_node_holds_no_worker_until_a_job_and_returns_it_after_the_idle_period(
    tmp_path: Path, make_settings, start_node
) -> None:
    before = _workers()
    settings = make_settings(workers={"processes": 1, "idle_release_s": 2.0}, routing={"study_stable_s": 0.5})
    node = start_node(settings)
    assert not node.runner.started and _workers() == before  # idle: no worker process
    study = write_study(tmp_path / "study", shape_zyx=(24, 48, 48))
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    wait_until(lambda: node.runner.started, 60, 0.05)  # the routed job started the pool
    wait_until(lambda: _workers() - before, 60, 0.05)
    database = Database(settings.database_url, migrate=False)
    try:
        wait_until(lambda: _job_state(database) in (JobState.SUCCEEDED, JobState.FAILED), 600)
        assert _job_state(database) is JobState.SUCCEEDED
    finally:
        database.dispose()
    wait_until(lambda: not node.runner.started, 60, 0.1)  # returned after 2 s without a job
    wait_until(lambda: _workers() == before, 30, 0.1)


def test_a_node_configured_warm_starts_its_workers_with_it(make_settings, start_node) -> None:
    before = _workers()
    node = start_node(make_settings(workers={"processes": 1, "warm_at_start": True, "idle_release_s": 0}))
    assert node.runner.started
    wait_until(lambda: _workers() - before, 60, 0.05)
    assert not node.runner.release_idle()  # 0: kept once started
