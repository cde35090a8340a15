"""Shared fixture of the index tests: a small PET/CT study stored through the receive path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from common.states import JobState
from dicom_node.ingest import parse_received
from storage import studies
from storage.database import Database
from storage.files import FileLayout
from storage.store import InstanceStore
from storage.types import NewJob
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


def complete(database: Database, pet_series_uid: str) -> list[int]:
    """Complete the stored study, queueing one PET job."""
    with database.session() as session:
        (completed,) = studies.quiet_studies(session, timedelta(0))
    assert {s.modality: s.instance_count for s in completed.series} == {"PT": 4, "CT": 4}
    with database.session() as session:
        return studies.complete_study(
            session, completed, [NewJob("r", "pet_quant", (pet_series_uid,), JobState.PENDING)]
        )
