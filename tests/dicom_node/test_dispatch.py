"""One bad result file never blocks a destination: a corrupted, altered or missing output fails on its own
(attempts recorded, dead after the maximum, shown by `immunode status`) while the other deliveries to the
same PACS (dcmtk storescp) go out; every association leaves an audit record."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import yaml
from sqlalchemy import select, update

from common.states import JobState, OutputKind
from common.types import JobResult, OutputFile, ResultDestination
from immunode.cli import main as cli_main
from immunode.flow import backoff_delay_s, dispatch_due
from storage import results
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import (
    AuditDirection,
    AuditKind,
    AuditOutcome,
    AuditRecord,
    Delivery,
    DeliveryState,
    Job,
    Output,
    Patient,
    Study,
    utcnow,
)
from tests.synthetic import write_study


def _job(database: Database, study_uid: str, patient_id: str) -> int:
    with database.session() as session:
        patient = Patient(patient_id=patient_id, issuer_of_patient_id="")
        study = Study(study_instance_uid=study_uid, patient=patient)
        job = Job(study=study, pipeline="pet_quant", study_revision=1, state=JobState.SUCCEEDED)
        session.add(job)
        session.flush()
        return job.id


def _output(database: Database, layout: FileLayout, job_id: int, source: Path, destination: str = "pacs") -> Path:
    ds = pydicom.dcmread(source)
    path = layout.new_output_path(job_id)
    ds.save_as(path)
    report = OutputFile(
        OutputKind.SR, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), "1.2.3"
    )
    with database.session() as session:
        results.record_job_result(
            session, layout, job_id, JobResult((report,), "one SR"), [ResultDestination(destination)]
        )
    return path


def test_bad_result_files_fail_alone_and_the_rest_is_delivered(
    tmp_path: Path, make_settings, database_url: str, pacs, capsys
) -> None:
    settings = make_settings(
        database_url,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        dispatch={"max_attempts": 2, "backoff_initial_s": 0, "backoff_max_s": 0, "timeout_s": 10},
    )
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    trail = AuditTrail(database, layout.spool)
    one = write_study(tmp_path / "one", with_ct=False, shape_zyx=(3, 8, 8), lesions=())
    other = write_study(tmp_path / "other", with_ct=False, shape_zyx=(2, 8, 8), lesions=())
    job_one, job_other = _job(database, one.study_uid, "P1"), _job(database, other.study_uid, "P2")
    corrupted = _output(database, layout, job_one, one.pet_files[0])
    altered = _output(database, layout, job_one, one.pet_files[1])
    missing = _output(database, layout, job_one, one.pet_files[2])
    good = [_output(database, layout, job_other, path) for path in other.pet_files]
    corrupted.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)  # unreadable
    with database.session() as session:  # as an output indexed before hashes were kept: only readability tells
        session.execute(update(Output).where(Output.path == layout.relative(corrupted)).values(sha256=""))
    changed = pydicom.dcmread(altered)
    changed.SeriesDescription = "edited on disk"
    changed.save_as(altered)  # still DICOM, but not what was validated
    missing.unlink()

    now = utcnow()
    assert dispatch_due(settings, database, layout, now, trail) == len(good)
    assert len(pacs.received()) == len(good)
    assert dispatch_due(settings, database, layout, now + timedelta(seconds=1), trail) == 0
    with database.session() as session:
        deliveries = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        states = [(d.state, d.attempts, d.last_error) for d in deliveries]
        audits = session.scalars(select(AuditRecord)).all()
    assert [s[0] for s in states[:3]] == [DeliveryState.DEAD] * 3
    assert all(attempts == 2 for _, attempts, _ in states[:3])
    assert "does not read as DICOM" in states[0][2]
    assert "changed since it was written" in states[1][2]
    assert "missing" in states[2][2]
    assert [s[0] for s in states[3:]] == [DeliveryState.SENT] * len(good)
    (audit,) = audits  # the second round had nothing sendable: no association, no record
    assert (audit.direction, audit.kind, audit.outcome) == (
        AuditDirection.OUTBOUND,
        AuditKind.SEND,
        AuditOutcome.COMPLETED,
    )
    assert audit.instances == len(good) and audit.study_uids == [other.study_uid]
    assert audit.called_ae_title == "PACS" and audit.peer_port == pacs.port

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    assert cli_main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "DEAD 3" in out and out.count("DEAD, 2 attempt(s)") == 3
    database.dispose()


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay_s(n, 30, 100) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]
