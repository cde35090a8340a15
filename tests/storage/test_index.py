"""Index state changes used by routing, jobs and dispatch, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.ingest import parse_received
from pipelines.types import ReportFile, RouteDecision
from storage import index
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Delivery, DeliveryState, Job, JobState, Study, StudyState, utcnow
from storage.store import InstanceStore
from tests.synthetic import write_study


@pytest.fixture
def stored(tmp_path: Path, database_url: str):
    study = write_study(tmp_path / "src", shape_zyx=(4, 16, 16), lesions=())
    layout = FileLayout(tmp_path / "root")
    store = InstanceStore(Database(database_url), layout)
    for path in list(study.pet_files) + list(study.ct_files):
        data = path.read_bytes()
        store.store(parse_received(data), data, "STORESCU")
    yield store.database, layout, study
    store.database.dispose()


def _complete(database: Database, pet_series_uid: str) -> list[int]:
    with database.session() as session:
        (completed,) = index.quiet_studies(session, timedelta(0))
    assert {s.modality: s.instance_count for s in completed.series} == {"PT": 4, "CT": 4}
    with database.session() as session:
        return index.complete_study(session, completed, (RouteDecision("r", "pet_quant", (pet_series_uid,)),))


def test_quiet_study_completes_once_and_queues_its_job(stored) -> None:
    database, layout, study = stored
    with database.session() as session:
        assert index.quiet_studies(session, timedelta(hours=1)) == []  # not quiet yet
    (job_id,) = _complete(database, study.pet_series_uid)
    with database.session() as session:
        assert session.scalar(select(Study.state)) is StudyState.COMPLETE
        assert index.quiet_studies(session, timedelta(0)) == []
        paths = index.job_series_paths(session, layout, job_id)
    assert list(paths) == [study.pet_series_uid] and len(paths[study.pet_series_uid]) == 4


def test_claimed_jobs_interrupted_by_a_stop_run_again_until_attempts_are_used(stored) -> None:
    database, _, study = stored
    (job_id,) = _complete(database, study.pet_series_uid)
    with database.session() as session:
        (spec,) = index.claim_pending_jobs(session, 4)
    assert spec.job_id == job_id
    with database.session() as session:
        assert index.reset_interrupted_jobs(session, max_attempts=2) == 1
        assert session.get(Job, job_id).state is JobState.PENDING
        index.claim_pending_jobs(session, 4)
    with database.session() as session:
        index.reset_interrupted_jobs(session, max_attempts=2)
        job = session.get(Job, job_id)
        assert job.state is JobState.FAILED and "interrupted 2 time(s)" in job.error


def test_delivery_attempts_back_off_then_die_and_retry_requeues(stored, tmp_path: Path) -> None:
    database, layout, study = stored
    (job_id,) = _complete(database, study.pet_series_uid)
    output_path = layout.new_output_path(job_id)
    output_path.write_bytes(b"x")
    report = ReportFile("SR", output_path, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.4.5", "1.2.3.4")
    with database.session() as session:
        index.record_outputs(session, layout, job_id, [(report, study.pet_series_uid, None)], ["pacs"])
    now = utcnow()
    with database.session() as session:
        (due,) = index.due_deliveries(session, layout, now)["pacs"]
        state = index.record_delivery_attempt(session, due.delivery_id, False, "refused", 2, now + timedelta(hours=1))
    assert state is DeliveryState.PENDING
    with database.session() as session:
        assert index.due_deliveries(session, layout, now) == {}  # waiting for its back-off
        state = index.record_delivery_attempt(session, due.delivery_id, False, "refused again", 2, now)
    assert state is DeliveryState.DEAD
    with database.session() as session:
        assert index.requeue_dead_deliveries(session, None) == 1
    with database.session() as session:
        delivery = session.get(Delivery, due.delivery_id)
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
