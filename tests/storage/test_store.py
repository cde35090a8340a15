"""The store stage and the index, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from dicom_node.ingest import parse_received
from pipelines.types import StoreOutcome
from storage.database import Database, upgrade
from storage.errors import OutOfResources
from storage.files import FileLayout
from storage.schema import Instance, Patient, Study, StudyState
from storage.store import InstanceStore
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

    monkeypatch.setattr(store, "_index_new", broken_index)
    with pytest.raises(RuntimeError):
        store.store(parse_received(data), data, "STORESCU")
    assert not any((tmp_path / "root" / "objects").rglob("*.dcm"))
