"""The stage table as the scheduler runs it (each stage every its interval, one pass at a time, started early by
the events the table names) and as docs/architecture.md shows it; the job runner on an engine it knows only by
the `Engine` protocol."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import select

from common.states import JobState
from immunode.engines import DaskEngine, LocalEngine, engine_for
from immunode.errors import EngineUnavailable
from immunode.stages import POLL, STAGES, Event, Stage, StageEntry, StageScheduler
from immunode.worker import JobRunner
from storage.database import Database
from storage.events import recent_events
from storage.schema import Job, Patient, Study
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]


def _doc_rows() -> dict[str, list[str]]:
    """The stage table of docs/architecture.md: stage name -> its cells."""
    rows = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_architecture_doc_shows_each_stage_of_the_table_as_the_code_runs_it() -> None:
    rows = _doc_rows()
    assert list(rows) == [entry.stage.value for entry in STAGES]  # every stage, in the table's order, no other
    for entry in STAGES:
        _, _, interval, early, runs_on = rows[entry.stage.value]
        assert f"`{entry.interval.key}`" in interval, entry.stage
        assert all(event.value in early for event in entry.early), entry.stage
        assert (early == "—") == (not entry.early), entry.stage
        assert entry.runs_on in runs_on, entry.stage


def test_each_stage_is_scheduled_every_its_interval_one_pass_at_a_time(make_settings) -> None:
    for enabled in (False, True):
        retention = {"max_age_days": 30} if enabled else {}
        settings = make_settings(
            routing={"poll_interval_s": 3600}, storage={"retention": {**retention, "interval_s": 1800}}
        )
        stages = StageScheduler(SimpleNamespace(settings=settings))
        stages.start()
        try:
            jobs = {job.id: job for job in stages.scheduler.get_jobs()}
        finally:
            stages.stop()
        expected = {entry.stage.value: entry.interval.seconds(settings) for entry in STAGES}
        assert expected[Stage.HEARTBEAT.value] == 5 and expected[Stage.ROUTE.value] == 3600
        if not enabled:
            assert expected.pop(Stage.RETENTION.value) is None
        else:
            assert expected[Stage.RETENTION.value] == 1800
        assert {name: job.trigger.interval.total_seconds() for name, job in jobs.items()} == expected
        assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())
    assert not stages.running


def _recording_table(passes: list[Stage], release: threading.Event | None = None) -> tuple[StageEntry, ...]:
    def run(stage: Stage):
        def one_pass(_host: object) -> None:
            passes.append(stage)
            if release is not None and stage is Stage.DISPATCH:
                release.wait(10)

        return one_pass

    return tuple(
        StageEntry(entry.stage, entry.does, run(entry.stage), POLL, entry.early, entry.runs_on) for entry in STAGES
    )


def test_events_start_the_stages_the_table_names_and_timed_starts_keep_the_earliest(make_settings) -> None:
    passes: list[Stage] = []
    stages = StageScheduler(SimpleNamespace(settings=make_settings(routing={"poll_interval_s": 3600})))
    stages.table = _recording_table(passes)
    stages.start()
    try:
        stages.happened(Event.FINISHED)
        wait_until(lambda: {Stage.PAIR, Stage.ANALYSE, Stage.DISPATCH} <= set(passes), 10, 0.02)
        time.sleep(0.3)
        assert sorted(passes, key=lambda stage: stage.value) == [Stage.ANALYSE, Stage.DISPATCH, Stage.PAIR]

        now = datetime.now(timezone.utc)
        stages.happened(Event.STORED, now + timedelta(seconds=100))
        assert stages.scheduler.get_job(Stage.ROUTE.value).next_run_time == now + timedelta(seconds=100)
        stages.happened(Event.STORED, now + timedelta(seconds=200))  # later: the earlier start stands
        assert stages.scheduler.get_job(Stage.ROUTE.value).next_run_time == now + timedelta(seconds=100)
        stages.happened(Event.NEXT_QUIET, now + timedelta(seconds=0.2))  # earlier: moves it
        wait_until(lambda: Stage.ROUTE in passes, 10, 0.02)
        assert stages.scheduler.get_job(Stage.ROUTE.value).next_run_time > now + timedelta(seconds=3000)
    finally:
        stages.stop()
    stages.happened(Event.FINISHED)  # stopped: nothing is started, nothing fails


def test_a_stage_still_running_is_not_started_twice(make_settings, caplog) -> None:
    passes: list[Stage] = []
    release = threading.Event()
    stages = StageScheduler(SimpleNamespace(settings=make_settings(routing={"poll_interval_s": 3600})))
    stages.table = _recording_table(passes, release)
    stages.start()
    try:
        stages.kick(Stage.DISPATCH)
        wait_until(lambda: Stage.DISPATCH in passes, 10, 0.02)
        for _ in range(3):
            stages.kick(Stage.DISPATCH)
            time.sleep(0.2)
        assert passes.count(Stage.DISPATCH) == 1
    finally:
        release.set()
        stages.stop()
    assert "maximum number of running instances" not in caplog.text  # by design, not a warning


class _Died(Exception):
    """A worker gone under its job."""


class _ThreadEngine:
    """An engine of this test: each job a thread that raises the error given, or waits while unreachable."""

    name = "test engine"
    started = False

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.reachable = True
        self.submitted: list[int] = []
        self._threads = ThreadPoolExecutor(2)

    def capacity(self) -> int:
        if not self.reachable:
            raise EngineUnavailable("test engine unreachable")
        return 1

    def submit(self, job_id: int):
        self.submitted.append(job_id)
        return self._threads.submit(self._fail)

    def _fail(self) -> None:
        raise self.error

    def warm(self) -> None:
        return None

    def release_idle(self) -> bool:
        return False

    def worker_died(self, error: BaseException) -> str | None:
        return "its test worker died" if isinstance(error, _Died) else None

    def close(self) -> None:
        self._threads.shutdown(wait=True)


def _queued_job(database: Database) -> int:
    with database.session() as session:
        study = Study(study_instance_uid="1.2.3.4", patient=Patient(patient_id="P1", issuer_of_patient_id=""))
        job = Job(study=study, pipeline="pet_quant", study_revision=1, state=JobState.PENDING)
        session.add(job)
        session.flush()
        return job.id


def _job(database: Database, job_id: int) -> Job:
    with database.session() as session:
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def test_the_runner_retries_a_job_whose_worker_died_then_fails_it_with_the_engines_reason(
    make_settings, database_url: str
) -> None:
    settings = make_settings(database_url, workers={"max_attempts": 2})
    database = Database(settings.database_url)
    finished: list[int] = []
    engine = _ThreadEngine(_Died("gone"))
    runner = JobRunner(settings, database, on_finished=finished.append, engine=engine)
    try:
        job_id = _queued_job(database)
        assert runner.submit_pending() == [job_id]
        wait_until(lambda: len(finished) == 1, 10, 0.02)
        job = _job(database, job_id)
        assert (job.state, job.attempts, job.error) == (JobState.PENDING, 1, "attempt 1 failed: its test worker died")
        assert runner.submit_pending() == [job_id]
        wait_until(lambda: len(finished) == 2, 10, 0.02)
        job = _job(database, job_id)
        assert (job.state, job.attempts, job.error) == (JobState.FAILED, 2, "its test worker died")
        assert runner.busy == 0 and engine.submitted == [job_id, job_id]
    finally:
        runner.stop()
        database.dispose()


def test_an_unreachable_engine_leaves_jobs_queued_and_says_so_once(make_settings, database_url: str) -> None:
    settings = make_settings(database_url)
    database = Database(settings.database_url)
    engine = _ThreadEngine(ValueError("a bug in the analysis"))
    runner = JobRunner(settings, database, engine=engine)
    try:
        job_id = _queued_job(database)
        engine.reachable = False
        assert runner.submit_pending() == [] and runner.submit_pending() == []
        assert _job(database, job_id).state is JobState.PENDING and runner.unavailable == "test engine unreachable"
        engine.reachable = True
        assert runner.submit_pending() == [job_id]
        wait_until(lambda: _job(database, job_id).state is JobState.PENDING, 10, 0.02)
        assert _job(database, job_id).error == "attempt 1 failed: ValueError: a bug in the analysis"
        with database.session() as session:
            messages = [event.message for event in recent_events(session, 10, ("INFO", "WARNING", "ERROR"))]
        assert messages.count("test engine unreachable") == 1 and messages.count("test engine reachable again") == 1
    finally:
        runner.stop()
        database.dispose()


def test_the_engine_is_chosen_once_from_the_configuration(make_settings) -> None:
    assert isinstance(engine_for(make_settings()), LocalEngine)
    dask = make_settings(
        database_url="postgresql://unused@127.0.0.1/unused",
        workers={"engine": "dask", "dask_scheduler": "tcp://127.0.0.1:1"},
    )
    assert isinstance(engine_for(dask), DaskEngine)
