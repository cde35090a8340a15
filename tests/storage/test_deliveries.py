"""Deliveries of a job's outputs: back-off, dead letters, retry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from common.states import OutputKind, SegEncoding
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


def test_each_destination_gets_the_seg_encoding_it_asked_for_and_every_sr(stored, tmp_path: Path) -> None:
    database, layout, study = stored
    (job_id,) = complete(database, study.pet_series_uid)

    def output(kind: OutputKind, uid: str, encodings: tuple[SegEncoding, ...] = ()) -> OutputFile:
        path = layout.new_output_path(job_id)
        path.write_bytes(uid.encode())
        sop_class = "1.2.840.10008.5.1.4.1.1.66.4"
        return OutputFile(kind, path, sop_class, uid, uid + ".1", study.pet_series_uid, seg_encodings=encodings)

    outputs = (
        # A label map was asked for but the FRACTIONAL SEG serves it (overlapping lesions).
        output(OutputKind.SEG, "1.2.1", (SegEncoding.FRACTIONAL, SegEncoding.LABELMAP)),
        output(OutputKind.SEG, "1.2.2", (SegEncoding.BINARY,)),
        output(OutputKind.SR, "1.2.3"),
    )
    destinations = [
        ResultDestination("ohif-pacs"),
        ResultDestination("slicer", SegEncoding.BINARY),
        ResultDestination("new-pacs", SegEncoding.LABELMAP),
    ]
    with database.session() as session:
        results.record_job_result(session, layout, job_id, JobResult(outputs, "two SEGs, one SR"), destinations)
    with database.session() as session:
        due = deliveries.due_deliveries(session, layout, utcnow())
    assert {name: sorted(d.sop_instance_uid for d in batch) for name, batch in due.items()} == {
        "ohif-pacs": ["1.2.1", "1.2.3"],
        "slicer": ["1.2.2", "1.2.3"],
        "new-pacs": ["1.2.1", "1.2.3"],
    }
