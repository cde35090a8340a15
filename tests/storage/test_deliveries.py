"""Deliveries of a job's outputs: back-off, dead letters, retry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from common.states import OutputKind
from common.types import JobResult, OutputFile, ResultDestination
from storage import deliveries, results
from storage.schema import Delivery, DeliveryState, utcnow
from tests.storage.conftest import complete


def test_delivery_attempts_back_off_then_die_and_retry_requeues(stored, tmp_path: Path) -> None:
    database, layout, study = stored
    (job_id,) = complete(database, study.pet_series_uid)
    output_path = layout.new_output_path(job_id)
    output_path.write_bytes(b"x")
    report = OutputFile(
        OutputKind.SR, output_path, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.4.5", "1.2.3.4", study.pet_series_uid
    )
    with database.session() as session:
        results.record_job_result(session, layout, job_id, JobResult((report,), "one SR"), [ResultDestination("pacs")])
    now = utcnow()
    with database.session() as session:
        (due,) = deliveries.due_deliveries(session, layout, now)["pacs"]
        state = deliveries.record_delivery_attempt(
            session, due.delivery_id, False, "refused", 2, now + timedelta(hours=1)
        )
    assert state is DeliveryState.PENDING
    with database.session() as session:
        assert deliveries.due_deliveries(session, layout, now) == {}  # waiting for its back-off
        state = deliveries.record_delivery_attempt(session, due.delivery_id, False, "refused again", 2, now)
    assert state is DeliveryState.DEAD
    with database.session() as session:
        assert deliveries.requeue_dead_deliveries(session, None) == 1
    with database.session() as session:
        delivery = session.get(Delivery, due.delivery_id)
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
