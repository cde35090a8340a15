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


def store_study(store: InstanceStore, folder: Path, patient_id: str, **attributes: str) -> tuple[str, str]:
    """A small PET study stored through the receive path, with study attributes set on every instance (keywords:
    AccessionNumber, StudyDate, StudyDescription, PatientName, SpecificCharacterSet); (study, series) UIDs."""
    import pydicom

    study = write_study(folder, shape_zyx=(2, 16, 16), lesions=(), with_ct=False, patient_id=patient_id)
    for path in study.pet_files:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        data = path.read_bytes()
        store.store(parse_received(data), data, "STORESCU")
    return study.study_uid, study.pet_series_uid


def job_with_result(database: Database, layout: FileLayout, study_uid: str, state: JobState, destinations=()) -> int:
    """Complete the (receiving) study with one PET job finished in `state`; a succeeded job gets an SR and one
    delivery per destination."""
    from pydicom.uid import generate_uid

    from common.states import OutputKind
    from common.types import JobResult, OutputFile, ResultDestination
    from storage import jobs, results

    with database.session() as session:
        (completed,) = [s for s in studies.quiet_studies(session, timedelta(0)) if s.study_instance_uid == study_uid]
        series = tuple(s.series_instance_uid for s in completed.series)
        (job_id,) = studies.complete_study(session, completed, [NewJob("r", "pet_quant", series, JobState.PENDING)])
    if state is JobState.PENDING:
        return job_id
    with database.session() as session:
        if state is JobState.SUCCEEDED:
            path = layout.new_output_path(job_id)
            path.write_bytes(b"an SR")
            sr = OutputFile(OutputKind.SR, path, "1.2.840.10008.5.1.4.1.1.88.34", generate_uid(), generate_uid())
            results.record_job_result(session, layout, job_id, JobResult((sr,), "1 lesion"), [ResultDestination(d) for d in destinations])
        jobs.finish_job(session, job_id, state, "1 lesion" if state is JobState.SUCCEEDED else "no PET series")
    return job_id
