"""Retention on studies stored through the receive path: oldest first, never a study whose analysis or delivery is
pending (or dead, or whose baseline role a waiting job needs), files and every index row of the study removed
together with an audit record; a purge interrupted by a crash at either step finished at start-up; a study that
changes during its purge put back; and no cached series key outlives its rows (another patient's instances are
never filed under a purged series' reused id)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, update

from common.states import JobState, PairingOutcome
from dicom_node.ingest import parse_received
from storage import audit, deliveries, pairings, retention
from storage.database import Database
from storage.files import FileLayout
from storage.schema import (
    AuditKind,
    Delivery,
    Instance,
    Job,
    Output,
    Pairing,
    Patient,
    Series,
    Study,
    utcnow,
)
from storage.settings import RetentionSettings
from storage.store import InstanceStore
from tests.storage.conftest import job_with_result, store_study


@pytest.fixture
def node_store(tmp_path: Path, database_url: str):
    layout = FileLayout(tmp_path / "root")
    database = Database(database_url)
    yield database, layout, InstanceStore(database, layout)
    database.dispose()


def _age(database: Database, study_uid: str, days: float) -> None:
    with database.session() as session:
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == study_uid)
            .values(last_received_at=utcnow() - timedelta(days=days))
        )


def _files(database: Database, layout: FileLayout, study_uid: str) -> list[Path]:
    with database.session() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        instances, outputs, _ = retention._study_files(session, study_id)
    return [layout.absolute(p) for p in instances + outputs]


def _rows_of(database: Database, study_uid: str) -> dict[str, int]:
    with database.session() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        jobs = select(Job.id).where(Job.study_fk == study_id)
        outputs = select(Output.id).where(Output.job_fk.in_(jobs))
        return {
            "studies": session.scalar(select(func.count()).where(Study.id == study_id)),
            "series": session.scalar(select(func.count()).where(Series.study_fk == study_id)),
            "instances": session.scalar(
                select(func.count(Instance.id)).join(Series).where(Series.study_fk == study_id)
            ),
            "jobs": session.scalar(select(func.count()).select_from(Job).where(Job.study_fk == study_id)),
            "outputs": session.scalar(select(func.count()).select_from(Output).where(Output.id.in_(outputs))),
            "deliveries": session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.output_fk.in_(outputs))
            ),
            "pairings": session.scalar(select(func.count()).select_from(Pairing).where(Pairing.job_fk.in_(jobs))),
        }


def test_age_purges_old_finished_studies_only_and_records_each(node_store, tmp_path: Path) -> None:
    database, layout, store = node_store
    made = {}
    for name in ("done", "failed", "dead", "pending", "receiving", "baseline", "recent"):
        made[name], _ = store_study(store, tmp_path / name, f"P-{name}")
    job_with_result(database, layout, made["done"], JobState.SUCCEEDED, ["pacs"])
    job_with_result(database, layout, made["failed"], JobState.FAILED)
    job_with_result(database, layout, made["dead"], JobState.SUCCEEDED, ["pacs"])
    waiting = job_with_result(database, layout, made["pending"], JobState.PENDING)
    job_with_result(database, layout, made["baseline"], JobState.SUCCEEDED)
    job_with_result(database, layout, made["recent"], JobState.SUCCEEDED)
    now = utcnow()
    with database.session() as session:
        for due in deliveries.due_deliveries(session, layout, now + timedelta(seconds=1))["pacs"]:
            dead = session.get(Delivery, due.delivery_id).output.job.study.study_instance_uid == made["dead"]
            deliveries.record_delivery_attempt(session, due.delivery_id, not dead, "refused", 1, now)
        # The pending study's job waits for the baseline study: neither may go.
        pairings.record_pairing(
            session, waiting, PairingOutcome.WAITING, "baseline analysing", made["baseline"], now + timedelta(hours=1)
        )
    for name in made:
        if name != "recent":
            _age(database, made[name], 10)
    _age(database, made["done"], 20)  # the oldest
    done_rows = _rows_of(database, made["done"])
    assert done_rows["deliveries"] == 1 and done_rows["outputs"] == 1 and done_rows["instances"] == 2
    files = {name: _files(database, layout, uid) for name, uid in made.items()}
    assert all(p.exists() for paths in files.values() for p in paths)

    policy = RetentionSettings(max_age_days=5)
    planned = retention.plan(policy, database, layout, utcnow())
    assert [c.study_instance_uid for c, _ in planned] == [made["done"], made["failed"]]  # oldest first
    purged = retention.apply(policy, database, layout, store.deleting_series)
    assert [p.study_instance_uid for p in purged] == [made["done"], made["failed"]]
    assert purged[0].instances == 2 and purged[0].outputs == 1 and purged[0].bytes_freed > 0
    for name in ("done", "failed"):
        assert not any(p.exists() for p in files[name])
        assert set(_rows_of(database, made[name]).values()) == {0}
    for name in ("dead", "pending", "receiving", "baseline", "recent"):
        assert all(p.exists() for p in files[name]), name
        assert _rows_of(database, made[name])["instances"] == 2
    with database.session() as session:
        assert session.scalar(select(func.count(Patient.id))) == len(made)  # patients (and imported data) stay
        records = [a for a in audit.audit_records(session) if a.kind is AuditKind.PURGE]
    assert sorted(r.study_uids for r in records) == sorted([(made["done"],), (made["failed"],)])
    line = records[-1].line()
    assert line.startswith("audit PURGE: COMPLETED, 2 instance(s) of ") and "more than 5 day(s) ago" in line
    assert list(layout.purging.iterdir()) == []
    assert retention.apply(policy, database, layout, store.deleting_series) == []  # nothing left that may go


def test_a_crash_between_the_steps_is_finished_at_start_up(node_store, tmp_path: Path, monkeypatch) -> None:
    database, layout, store = node_store
    study_uid, _ = store_study(store, tmp_path / "a", "P-A")
    job_with_result(database, layout, study_uid, JobState.SUCCEEDED)
    with database.session() as session:
        (candidate,) = retention.candidates(session)
    files = _files(database, layout, study_uid)
    relative = [layout.relative(p) for p in files]

    # Killed after moving the files out, before the rows were deleted: the rows still name them, they go back.
    folder = layout.purging / "interrupted"
    folder.mkdir()
    retention._write_manifest(folder, study_uid, relative)
    retention._move_out(layout, folder, relative)
    assert not any(p.exists() for p in files)
    assert retention.recover_interrupted(database, layout) == (0, 0)  # maybe another node's, in progress
    assert retention.recover_interrupted(database, layout, grace_s=0) == (3, 0)
    assert all(p.exists() for p in files) and not folder.exists()
    assert _rows_of(database, study_uid)["instances"] == 2

    # Killed after the rows were deleted, before the folder was: the files are nobody's, they go.
    def killed(path: Path) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(retention.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        retention.purge_study(database, layout, candidate, "test", store.deleting_series)
    monkeypatch.undo()
    (left,) = list(layout.purging.iterdir())
    assert len(list(left.glob("*.dcm"))) == 3 and set(_rows_of(database, study_uid).values()) == {0}
    assert retention.recover_interrupted(database, layout, grace_s=0) == (0, 3)
    assert list(layout.purging.iterdir()) == [] and not any(p.exists() for p in files)


def test_a_study_that_changes_during_its_purge_is_put_back(node_store, tmp_path: Path) -> None:
    database, layout, store = node_store
    study_uid, series_uid = store_study(store, tmp_path / "a", "P-A")
    job_with_result(database, layout, study_uid, JobState.SUCCEEDED)
    with database.session() as session:
        (candidate,) = retention.candidates(session)
    late = pydicom.dcmread(next((tmp_path / "a" / "PT").glob("*.dcm")))
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.save_as(tmp_path / "late.dcm")

    def an_instance_arrives_meanwhile(series: object, delete):
        data = (tmp_path / "late.dcm").read_bytes()
        store.store(parse_received(data), data, "STORESCU")  # the scanner sends one more instance
        return store.deleting_series(series, delete)

    assert retention.purge_study(database, layout, candidate, "test", an_instance_arrives_meanwhile) is None
    assert _rows_of(database, study_uid)["instances"] == 3
    assert all(p.exists() for p in _files(database, layout, study_uid))
    assert list(layout.purging.iterdir()) == []


def test_no_cached_series_outlives_its_rows(node_store, tmp_path: Path) -> None:
    """A purged series' id may be handed to the next new series (SQLite reuses the largest ids): an instance of the
    purged series sent again must be filed under its own patient, never under the series that got the id."""
    database, layout, store = node_store
    study_uid, series_uid = store_study(store, tmp_path / "x", "P-X")
    job_with_result(database, layout, study_uid, JobState.SUCCEEDED)
    resent = next((tmp_path / "x" / "PT").glob("*.dcm")).read_bytes()
    with database.session() as session:
        (candidate,) = retention.candidates(session)
    assert retention.purge_study(database, layout, candidate, "test", store.deleting_series) is not None
    other_uid, _ = store_study(store, tmp_path / "y", "P-Y")  # a new series of another patient
    store.store(parse_received(resent), resent, "STORESCU")
    with database.session() as session:
        patients = dict(
            session.execute(
                select(Series.series_instance_uid, Patient.patient_id)
                .join(Study, Study.id == Series.study_fk)
                .join(Patient, Patient.id == Study.patient_fk)
            ).all()
        )
    assert patients[series_uid] == "P-X"
    assert _rows_of(database, other_uid)["instances"] == 2 and _rows_of(database, study_uid)["instances"] == 1


def test_a_series_purged_by_another_node_is_indexed_again(node_store, tmp_path: Path) -> None:
    """Two nodes on one index: one purges a study whose series the other has cached; the other's next instance of
    that series is indexed under a new study (the stale key is dropped), not refused."""
    database, layout, store = node_store
    study_uid, series_uid = store_study(store, tmp_path / "x", "P-X")
    job_with_result(database, layout, study_uid, JobState.SUCCEEDED)
    resent = next((tmp_path / "x" / "PT").glob("*.dcm")).read_bytes()
    other_node = InstanceStore(database, layout)
    with database.session() as session:
        (candidate,) = retention.candidates(session)
    assert retention.purge_study(database, layout, candidate, "test", other_node.deleting_series) is not None
    store.store(parse_received(resent), resent, "STORESCU")  # this node still has the series cached
    assert _rows_of(database, study_uid)["instances"] == 1
