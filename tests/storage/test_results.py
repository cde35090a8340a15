"""Result versions in the index: each job's outputs are a version, numbered per study and pipeline, with the
reason and series numbers; the next job reads what it supersedes (the SR and its SEG) and the numbers taken."""

from __future__ import annotations

from common.states import JobState, OutputKind
from common.types import JobResult, OutputFile, ResultDestination
from storage import jobs, results
from tests.storage.conftest import complete

SEG_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _write(layout, job_id: int, source: str, numbers: tuple[int, int], supersedes: str = "") -> tuple[list, str]:
    """A job's SEG and SR recorded as written (the files' content is not read here); returns the SR's UID."""
    files = []
    for kind, sop_class, number in ((OutputKind.SEG, SEG_CLASS, numbers[0]), (OutputKind.SR, SR_CLASS, numbers[1])):
        path = layout.new_output_path(job_id)
        path.write_bytes(b"validated output")
        uid = f"1.2.826.0.1.3680043.10.{job_id}.{number}"
        replaced = supersedes if kind is OutputKind.SR else ""
        files.append(OutputFile(kind, path, sop_class, f"{uid}.1", uid, source, replaced, number))
    return files, files[1].sop_instance_uid


def test_versions_are_numbered_with_their_reason_series_and_predecessor(stored) -> None:
    database, layout, study = stored
    (first,) = complete(database, study.pet_series_uid)
    source = study.pet_series_uid
    files, sr_v1 = _write(layout, first, source, (990, 991))
    with database.session() as session:
        results.record_job_result(session, layout, first, JobResult(tuple(files), "v1"), [ResultDestination("pacs")])
        jobs.finish_job(session, first, JobState.SUCCEEDED, "v1")
        second = jobs.requeue_study(session, study.study_uid, "pet_quant", "a reader's annotation arrived")
    with database.session() as session:
        version = results.result_version(session, study.study_uid, second)
        previous = results.previous_reports(session, layout, study.study_uid, second)[source]
    assert (version.number, version.reason) == (2, "a reader's annotation arrived")
    assert {990, 991} <= version.series_numbers_used
    assert previous.sop_instance_uid == sr_v1 and previous.segmentation_path.read_bytes() == b"validated output"
    files, sr_v2 = _write(layout, second, source, (1000, 1001), supersedes=sr_v1)
    with database.session() as session:
        results.record_job_result(session, layout, second, JobResult(tuple(files), "v2"), [ResultDestination("pacs")])
    with database.session() as session:
        (chain,) = results.result_versions(session, 10)
    assert chain.study_instance_uid == study.study_uid
    v1, v2 = chain.versions
    assert (v1.pipeline, v1.number, v1.job_id, v1.series_numbers, v1.sr_sop_instance_uid) == (
        "pet_quant",
        1,
        first,
        (990, 991),
        sr_v1,
    )
    assert (v2.number, v2.series_numbers, v2.supersedes_sop_instance_uid) == (2, (1000, 1001), sr_v1)
    assert v2.line() == f"series 1000, 1001; SR {sr_v2} (supersedes {sr_v1}): a reader's annotation arrived"
