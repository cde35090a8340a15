"""The store stage and the index, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import event, func, inspect, select
from sqlalchemy.exc import OperationalError

from dicom_node.ingest import parse_received
from storage import integrity
from storage.database import Database, upgrade
from storage.errors import IdentityMismatch, IndexUnavailable, OutOfResources
from storage.files import FileLayout
from storage.schema import ConflictKind, Instance, Patient, Series, Study, StudyState
from storage.store import InstanceStore
from storage.types import StoreOutcome
from tests.synthetic import write_study


@pytest.fixture
def study_files(tmp_path: Path):
    return write_study(tmp_path / "src", with_ct=False, shape_zyx=(6, 32, 32), lesions=())


def _store(tmp_path: Path, url: str, min_free_mb: int = 0) -> InstanceStore:
    return InstanceStore(Database(url), FileLayout(tmp_path / "root", min_free_mb))


def test_migration_creates_every_table_and_is_idempotent(database_url: str) -> None:
    database = Database(database_url)
    upgrade(database.engine)
    tables = set(inspect(database.engine).get_table_names())
    assert {
        "patients",
        "studies",
        "series",
        "instances",
        "jobs",
        "outputs",
        "deliveries",
        "events",
        "alembic_version",
    } <= tables
    database.dispose()


def test_new_instance_is_on_disk_and_indexed(tmp_path: Path, database_url: str, study_files) -> None:
    store = _store(tmp_path, database_url)
    data = study_files.pet_files[0].read_bytes()
    stored = store.store(parse_received(data), data, "STORESCU")
    assert stored.outcome is StoreOutcome.NEW
    assert stored.path.read_bytes() == data
    assert stored.path.is_relative_to(tmp_path / "root" / "objects")
    with store.database.session() as session:
        instance = session.scalar(select(Instance))
        assert instance.sop_instance_uid == stored.header.sop_instance_uid
        assert instance.series.study.state is StudyState.RECEIVING
        assert session.scalar(select(Patient)).issuer_of_patient_id == "IMMUNODE-TEST"


def test_duplicate_uid_policy_keeps_one_row(tmp_path: Path, database_url: str, study_files) -> None:
    store = _store(tmp_path, database_url)
    data = study_files.pet_files[0].read_bytes()
    header = parse_received(data)
    first = store.store(header, data, "STORESCU")
    again = store.store(header, data, "STORESCU")
    assert again.outcome is StoreOutcome.DUPLICATE_IDENTICAL and again.path == first.path
    changed = data[:-2] + b"\x01\x00"
    replaced = store.store(parse_received(changed), changed, "STORESCU")
    assert replaced.outcome is StoreOutcome.REPLACED
    assert replaced.path.read_bytes() == changed and not first.path.exists()
    with store.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1
        assert session.scalar(select(Instance.times_received)) == 3


def test_instances_after_completion_reopen_the_study(tmp_path: Path, database_url: str, study_files) -> None:
    store = _store(tmp_path, database_url)
    data = study_files.pet_files[0].read_bytes()
    store.store(parse_received(data), data, "STORESCU")
    with store.database.session() as session:
        session.scalar(select(Study)).state = StudyState.COMPLETE
    late = study_files.pet_files[1].read_bytes()
    store.store(parse_received(late), late, "STORESCU")
    with store.database.session() as session:
        study = session.scalar(select(Study))
        assert (study.state, study.revision) == (StudyState.RECEIVING, 2)


def test_disk_floor_refuses_and_leaves_nothing(tmp_path: Path, database_url: str, study_files) -> None:
    store = _store(tmp_path, database_url, min_free_mb=10**9)
    data = study_files.pet_files[0].read_bytes()
    with pytest.raises(OutOfResources):
        store.store(parse_received(data), data, "STORESCU")
    assert not any((tmp_path / "root" / "objects").rglob("*.dcm"))
    assert not any((tmp_path / "root" / "incoming").iterdir())
    with store.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0


def test_failed_index_commit_removes_the_new_file(tmp_path: Path, database_url: str, study_files, monkeypatch) -> None:
    store = _store(tmp_path, database_url)
    data = study_files.pet_files[0].read_bytes()

    def broken_index(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(store, "_insert_new", broken_index)
    with pytest.raises(RuntimeError):
        store.store(parse_received(data), data, "STORESCU")
    assert not any((tmp_path / "root" / "objects").rglob("*.dcm"))


# --- nothing is ever filed under the wrong patient ---------------------------------------------------------


def _filed(database: Database) -> dict[str, tuple[str, str, str, str]]:
    """SOP Instance UID -> (PatientID, issuer, Study UID, Series UID) as indexed."""
    with database.session() as session:
        rows = session.execute(
            select(
                Instance.sop_instance_uid,
                Patient.patient_id,
                Patient.issuer_of_patient_id,
                Study.study_instance_uid,
                Series.series_instance_uid,
            )
            .join(Series, Series.id == Instance.series_fk)
            .join(Study, Study.id == Series.study_fk)
            .join(Patient, Patient.id == Study.patient_fk)
        ).all()
    return {uid: tuple(rest) for uid, *rest in rows}


def _sent(files) -> dict[str, tuple[str, str, str, str]]:
    sent = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sent[ds.SOPInstanceUID] = (ds.PatientID, ds.IssuerOfPatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    return sent


def test_a_failed_commit_leaves_nothing_cached_and_every_patient_is_filed_right(
    tmp_path: Path, database_url: str
) -> None:
    """The index commit of patient A's first instance fails (disk full, connection lost at commit). Then
    patient B arrives, then A's instances are resent. Every instance must be indexed under the patient,
    study and series it names (today's code filed A's under B: SQLite reuses rolled-back row ids and the
    series cache still held them)."""
    a = write_study(tmp_path / "a", with_ct=False, shape_zyx=(4, 16, 16), lesions=(), patient_id="PATIENT-A")
    b = write_study(tmp_path / "b", with_ct=False, shape_zyx=(4, 16, 16), lesions=(), patient_id="PATIENT-B")
    store = _store(tmp_path, database_url)
    failures = iter([True])

    def fail_once(connection) -> None:
        if next(failures, False):
            raise OperationalError("COMMIT", {}, Exception("disk I/O error (injected)"))

    event.listen(store.database.engine, "commit", fail_once)
    first = a.pet_files[0].read_bytes()
    with pytest.raises(IndexUnavailable):
        store.store(parse_received(first), first, "STORESCU")
    for path in b.pet_files + a.pet_files:
        data = path.read_bytes()
        store.store(parse_received(data), data, "STORESCU")
    assert _filed(store.database) == _sent(a.pet_files + b.pet_files)
    assert not any((tmp_path / "root" / "incoming").iterdir())
    stored_files = list((tmp_path / "root" / "objects").rglob("*.dcm"))
    assert len(stored_files) == len(a.pet_files) + len(b.pet_files)


def test_an_instance_naming_another_patient_is_refused_and_recorded(tmp_path: Path, database_url: str) -> None:
    study = write_study(tmp_path / "s", with_ct=False, shape_zyx=(3, 16, 16), lesions=(), patient_id="REAL-ID")
    store = _store(tmp_path, database_url)
    for path in study.pet_files[:2]:
        data = path.read_bytes()
        store.store(parse_received(data), data, "STORESCU")
    stray = pydicom.dcmread(study.pet_files[2])
    stray.PatientID = "../../../../etc/passwd"
    data = _bytes(stray)
    with pytest.raises(IdentityMismatch, match="another patient"):
        store.store(parse_received(data), data, "STRAY")
    # The issuer counts too: same PatientID, other issuer, is another patient.
    stray.PatientID, stray.IssuerOfPatientID = "REAL-ID", "OTHER-HOSPITAL"
    data = _bytes(stray)
    with pytest.raises(IdentityMismatch):
        store.store(parse_received(data), data, "STRAY")
    assert _filed(store.database) == _sent(study.pet_files[:2])
    with store.database.session() as session:
        total, conflicts = integrity.conflicts(session, 10)
    assert total == 2 and {c.kind for c in conflicts} == {ConflictKind.PATIENT}
    assert "../../../../etc/passwd" in conflicts[-1].received and "REAL-ID" in conflicts[-1].indexed
    assert len(list((tmp_path / "root" / "objects").rglob("*.dcm"))) == 2  # nothing of the refused kept


def test_a_series_or_instance_named_under_another_study_is_refused(tmp_path: Path, database_url: str) -> None:
    study = write_study(tmp_path / "s", with_ct=False, shape_zyx=(3, 16, 16), lesions=(), patient_id="P1")
    store = _store(tmp_path, database_url)
    data = study.pet_files[0].read_bytes()
    store.store(parse_received(data), data, "STORESCU")
    moved = pydicom.dcmread(study.pet_files[1])
    moved.StudyInstanceUID = generate_uid()  # same series UID, another study
    data = _bytes(moved)
    with pytest.raises(IdentityMismatch, match="indexed under study"):
        store.store(parse_received(data), data, "STORESCU")
    again = pydicom.dcmread(study.pet_files[0])
    again.SeriesInstanceUID = generate_uid()  # an indexed SOP Instance UID resent in another series
    data = _bytes(again)
    with pytest.raises(IdentityMismatch):
        store.store(parse_received(data), data, "STORESCU")
    assert _filed(store.database) == _sent(study.pet_files[:1])
    with store.database.session() as session:
        assert {c.kind for c in integrity.conflicts(session, 10)[1]} == {ConflictKind.STUDY}


def test_a_stray_first_instance_does_not_capture_the_study(tmp_path: Path, database_url: str) -> None:
    """The first instance of a study fixes its patient; a stray one arriving first makes the real ones be
    refused with the conflict recorded (never silently merged under the stray's PatientID)."""
    study = write_study(tmp_path / "s", with_ct=False, shape_zyx=(3, 16, 16), lesions=(), patient_id="REAL-ID")
    store = _store(tmp_path, database_url)
    stray = pydicom.dcmread(study.pet_files[0])
    stray.PatientID = "../../../../etc/passwd"
    data = _bytes(stray)
    store.store(parse_received(data), data, "STRAY")
    for path in study.pet_files[1:]:
        data = path.read_bytes()
        with pytest.raises(IdentityMismatch):
            store.store(parse_received(data), data, "STORESCU")
    filed = _filed(store.database)
    assert len(filed) == 1 and all(patient != "REAL-ID" for patient, *_ in filed.values())
    with store.database.session() as session:
        assert integrity.conflicts(session, 10)[0] == 2


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_sqlite_hot_path_writes_the_rows_sqlalchemy_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, study_files
) -> None:
    """On SQLite a new instance's INSERT and its study's refresh run on the driver's cursor (`Prepared`); the
    columns hold what SQLAlchemy's own statements write (compared row by row with the same store run without it),
    times included: one whose microseconds are 0 is where the driver's own conversion would differ."""
    from storage import store as store_module

    monkeypatch.setattr(store_module, "utcnow", lambda: datetime(2026, 12, 5, 1, 2, 3))
    data = [path.read_bytes() for path in study_files.pet_files[:3]]
    rows = {}
    for hot in (True, False):
        store = _store(tmp_path / str(hot), f"sqlite:///{tmp_path / str(hot) / 'index.sqlite3'}")
        assert store._prepared_insert is not None and store._prepared_refresh is not None
        if not hot:
            store._prepared_insert = store._prepared_refresh = None
        for item in data:
            assert store.store(parse_received(item), item, "STORESCU").outcome is StoreOutcome.NEW
        with store.database.engine.connect() as connection:
            instances = connection.exec_driver_sql(
                "SELECT sop_instance_uid, sop_class_uid, series_fk, instance_number, transfer_syntax_uid, size_bytes,"
                " sha256, calling_ae_title, typeof(received_at), received_at, times_received FROM instances"
                " ORDER BY id"
            ).all()
            study = connection.exec_driver_sql(
                "SELECT state, typeof(last_received_at), last_received_at, revision FROM studies"
            ).all()
        with store.database.session() as session:
            received = session.scalars(select(Instance.received_at)).all()
            last = session.scalar(select(Study.last_received_at))
        assert set(received) == {datetime(2026, 12, 5, 1, 2, 3)} and last == datetime(2026, 12, 5, 1, 2, 3)
        rows[hot] = (instances, study)
        store.database.dispose()
    assert rows[True] == rows[False]
    assert rows[True][1] == [("RECEIVING", "text", "2026-12-05 01:02:03.000000", 1)]


def test_a_driver_error_on_the_hot_path_is_an_index_error_and_leaves_nothing(tmp_path: Path, study_files) -> None:
    store = _store(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite3'}")
    first, second = (path.read_bytes() for path in study_files.pet_files[:2])
    store.store(parse_received(first), first, "STORESCU")  # the series is known: the next takes the hot path
    with store.database.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
    with pytest.raises(IndexUnavailable, match="refused by a trigger"):
        store.store(parse_received(second), second, "STORESCU")
    with store.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1
    assert len(list(store.layout.object_files())) == 1
