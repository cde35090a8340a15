"""The node end to end: dcmtk storescu as the scanner, the node in this process, dcmtk storescp as the PACS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
from sqlalchemy import select

from common.states import JobState
from common.types import LESION_RESULTS
from immunode.cli import main as cli_main
from immunode.service import Node
from immunode.stages import Stage
from storage.records import read_records
from storage.schema import Delivery, DeliveryState, Event, Job, Study, StudyState
from tests.conftest import STS_002, StoreSCP, dciodvfy_errors, free_port, require_tool, storescu, wait_until
from tests.synthetic import DEFAULT_LESIONS, write_rtstruct, write_study


def _destination(port: int, name: str = "pacs") -> list[dict]:
    return [{"name": name, "ae_title": "PACS", "host": "127.0.0.1", "port": port}]


def _jobs(node: Node) -> list[Job]:
    with node.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def _deliveries(node: Node) -> list[Delivery]:
    with node.database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)).all())


def _by_class(files: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        found.setdefault(ds.SOPClassUID.name, []).append(ds)
    return found


def test_synthetic_whole_body_study_comes_back_as_seg_and_sr(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node, database_url: str
) -> None:
    study = write_study(tmp_path / "scanner", vendor="ge")
    node = start_node(make_settings(database_url, destinations=_destination(pacs.port)))
    completed = storescu(node.port, list(study.pet_files) + list(study.ct_files))
    assert completed.returncode == 0, completed.stderr

    received = wait_until(lambda: pacs.received() if len(pacs.received()) >= 2 else None, timeout_s=120)
    for path in received:
        assert dciodvfy_errors(path) == [], path
    objects = _by_class(received)
    (seg_ds,) = objects["Segmentation Storage"]
    (sr_ds,) = objects["Comprehensive 3D SR Storage"]
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study.study_uid
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID
    assert len(seg.SegmentSequence) == len(DEFAULT_LESIONS)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2 * len(DEFAULT_LESIONS)  # per lesion: its measurements with its segment; its outline
    referenced = {ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.pet_files}

    (job,) = _jobs(node)
    assert job.state is JobState.SUCCEEDED and job.pipeline == "pet_quant"
    with node.database.session() as session:
        stored = read_records(session, LESION_RESULTS, job_id=job.id)
    assert len(stored) == len(DEFAULT_LESIONS) and all(r.cytact is not None for r in stored)
    assert "lung" in job.summary and "abdomen" in job.summary  # locations from the study's CT
    assert all(d.state is DeliveryState.SENT and d.attempts == 1 for d in _deliveries(node))

    # A late instance re-opens the study; the re-run's SR supersedes the first.
    late = pydicom.dcmread(study.ct_files[0])
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    late_path = tmp_path / "late.dcm"
    late.save_as(late_path)
    assert storescu(node.port, [late_path]).returncode == 0
    wait_until(lambda: len(pacs.received()) >= 4, timeout_s=120)
    reports = _by_class(pacs.received())["Comprehensive 3D SR Storage"]
    newest = next(r for r in reports if r.SOPInstanceUID != sr_ds.SOPInstanceUID)
    predecessor = newest.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == sr_ds.SOPInstanceUID
    with node.database.session() as session:
        assert session.scalar(select(Study.revision)) == 2
    assert [j.state for j in _jobs(node)] == [JobState.SUCCEEDED, JobState.SUCCEEDED]


def test_reader_annotation_after_the_images_reruns_in_semi_automatic_mode(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node
) -> None:
    study = write_study(tmp_path / "scanner", with_ct=False)
    node = start_node(make_settings(destinations=_destination(pacs.port)))
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    wait_until(lambda: len(pacs.received()) >= 2, timeout_s=120)
    # The reader contours two of the four lesions; the RTSTRUCT arrives after the analysis.
    rtstruct = write_rtstruct(tmp_path / "rs.dcm", study, (DEFAULT_LESIONS[0], DEFAULT_LESIONS[3]))
    assert storescu(node.port, [rtstruct]).returncode == 0
    wait_until(lambda: len(pacs.received()) >= 4, timeout_s=120)
    jobs = _jobs(node)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert "detected automatically" in jobs[0].summary and "2 reader annotation(s)" in jobs[1].summary
    segs = _by_class(pacs.received())["Segmentation Storage"]
    assert sorted(len(s.SegmentSequence) for s in segs) == [2, 4]


def test_reader_seg_sent_before_the_images_defines_the_lesions(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node
) -> None:
    from tests.pipelines.imaging.test_annotations import reader_seg

    study = write_study(tmp_path / "scanner", with_ct=False)
    seg = reader_seg(study, DEFAULT_LESIONS[2], tmp_path / "reader-seg.dcm")
    node = start_node(make_settings(destinations=_destination(pacs.port)))
    assert storescu(node.port, [seg], extra=["--required"]).returncode == 0  # propose the SEG class itself
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    wait_until(lambda: len(pacs.received()) >= 2, timeout_s=120)
    (job,) = _jobs(node)
    assert "1 reader annotation(s)" in job.summary
    (ours,) = _by_class(pacs.received())["Segmentation Storage"]
    assert len(ours.SegmentSequence) == 1 and ours.Manufacturer == "immunode"


def test_real_pet_ct_of_sts_002(make_settings, pacs: StoreSCP, start_node) -> None:
    node = start_node(make_settings(destinations=_destination(pacs.port)))
    files = sorted((STS_002 / "PET").glob("*.dcm")) + sorted((STS_002 / "CT").glob("*.dcm"))
    completed = storescu(node.port, files)
    assert completed.returncode == 0, completed.stderr
    received = wait_until(lambda: pacs.received() if len(pacs.received()) >= 2 else None, timeout_s=120)
    objects = _by_class(received)
    assert set(objects) == {"Segmentation Storage", "Comprehensive 3D SR Storage"}
    for path in received:
        assert dciodvfy_errors(path) == []
    pet = pydicom.dcmread(next((STS_002 / "PET").glob("0*.dcm")))
    assert objects["Segmentation Storage"][0].StudyInstanceUID == pet.StudyInstanceUID


def test_pet_without_dose_fails_its_job_with_reason_and_sends_nothing(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node
) -> None:
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(20, 48, 48), dose_bq=None)
    node = start_node(make_settings(destinations=_destination(pacs.port)))
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    job = wait_until(lambda: next((j for j in _jobs(node) if j.state is JobState.FAILED), None), timeout_s=120)
    assert "RadionuclideTotalDose" in job.error
    assert pacs.received() == [] and _deliveries(node) == []
    with node.database.session() as session:
        messages = [
            e.message for e in session.scalars(select(Event).where(Event.study_instance_uid == study.study_uid))
        ]
    assert any("RadionuclideTotalDose" in m for m in messages)


def test_destination_down_then_back_receives_results_once(tmp_path: Path, make_settings, start_node) -> None:
    port = free_port()
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(30, 48, 48), lesions=DEFAULT_LESIONS[1:2])
    node = start_node(make_settings(destinations=_destination(port), dispatch={"max_attempts": 50}))
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    wait_until(lambda: _deliveries(node) and all(d.attempts >= 2 for d in _deliveries(node)), timeout_s=120)
    assert all(d.state is DeliveryState.PENDING and d.last_error for d in _deliveries(node))
    pacs = StoreSCP(tmp_path / "late-pacs", port)
    pacs.start()
    try:
        wait_until(lambda: all(d.state is DeliveryState.SENT for d in _deliveries(node)), timeout_s=60)
        node.stages.pass_once(Stage.DISPATCH)  # nothing is due any more: nothing is sent twice
        assert len(pacs.received()) == len(_deliveries(node)) == 2
    finally:
        pacs.stop()


def test_retry_counts_survive_a_restart(tmp_path: Path, make_settings, start_node) -> None:
    port = free_port()
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(30, 48, 48), lesions=DEFAULT_LESIONS[1:2])
    settings = make_settings(destinations=_destination(port), dispatch={"max_attempts": 50, "backoff_initial_s": 0.2})
    first = start_node(settings)
    assert storescu(first.port, list(study.pet_files)).returncode == 0
    wait_until(lambda: _deliveries(first) and all(d.attempts >= 2 for d in _deliveries(first)), timeout_s=120)
    first.stop()
    before = {d.id: d.attempts for d in _deliveries(first)}
    second = start_node(settings)
    wait_until(lambda: all(d.attempts > before[d.id] for d in _deliveries(second)), timeout_s=60)
    assert all(d.attempts >= before[d.id] + 1 for d in _deliveries(second))


def test_dead_letter_shown_by_status_and_requeued_by_retry(
    tmp_path: Path, make_settings, start_node, capsys, database_url: str
) -> None:
    port = free_port()
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(30, 48, 48), lesions=DEFAULT_LESIONS[1:2])
    settings = make_settings(database_url, destinations=_destination(port), dispatch={"max_attempts": 2})
    config = tmp_path / "config.yaml"
    config.write_text(__import__("yaml").safe_dump(settings.model_dump(mode="json")))
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    wait_until(
        lambda: _deliveries(node) and all(d.state is DeliveryState.DEAD for d in _deliveries(node)), timeout_s=120
    )
    assert cli_main(["--config", str(config), "status"]) == 0
    shown = capsys.readouterr().out
    assert "DEAD 2" in shown and "cannot connect" in shown or "not established" in shown
    pacs = StoreSCP(tmp_path / "pacs", port)
    pacs.start()
    try:
        assert cli_main(["--config", str(config), "retry"]) == 0
        wait_until(lambda: all(d.state is DeliveryState.SENT for d in _deliveries(node)), timeout_s=60)
        assert len(pacs.received()) == 2
    finally:
        pacs.stop()


def test_pending_work_resumes_after_restart(tmp_path: Path, make_settings, pacs: StoreSCP, start_node) -> None:
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(30, 48, 48), lesions=DEFAULT_LESIONS[1:2])
    slow = make_settings(destinations=_destination(pacs.port), routing={"study_stable_s": 3600, "poll_interval_s": 0.2})
    first = start_node(slow)
    assert storescu(first.port, list(study.pet_files)).returncode == 0
    first.stop()
    second = start_node(make_settings(destinations=_destination(pacs.port)))
    wait_until(lambda: len(pacs.received()) >= 2, timeout_s=120)
    with second.database.session() as session:
        assert session.scalar(select(Study.state)) is StudyState.COMPLETE


def test_crashing_worker_never_takes_the_scp_down(tmp_path: Path, make_settings, start_node) -> None:
    study = write_study(tmp_path / "scanner", with_ct=False, shape_zyx=(20, 48, 48), lesions=DEFAULT_LESIONS[1:2])
    # 64 MB of address space cannot even import the analysis stack: the worker process dies.
    node = start_node(make_settings(workers={"processes": 1, "job_memory_limit_mb": 64, "max_attempts": 2}))
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    job = wait_until(lambda: next((j for j in _jobs(node) if j.state is JobState.FAILED), None), timeout_s=120)
    assert job.attempts == 2 and job.error
    echo = subprocess.run(
        [require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "IMMUNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0


def test_orthanc_as_the_pacs_files_seg_and_sr_under_the_source_study(
    tmp_path: Path, make_settings, start_node, orthanc
) -> None:
    """A real PACS: the node's SEG and SR, sent by C-STORE to Orthanc, are stored there under the study they
    were derived from (checked through Orthanc's REST API)."""
    study = write_study(tmp_path / "src", vendor="ge", shape_zyx=(40, 64, 64), lesions=DEFAULT_LESIONS[:2])
    settings = make_settings(
        destinations=[
            {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
        ]
    )
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    series = wait_until(
        lambda: (
            (found := orthanc.series_of_study(study.study_uid))
            and {"SEG", "SR"} <= {s.get("Modality") for s in found}
            and found
        ),
        timeout_s=180,
    )
    modalities = sorted(s.get("Modality") for s in series)
    assert modalities == ["SEG", "SR"]  # only results go to the PACS, filed under the source study
    derived = [s for s in series if s.get("Modality") in ("SEG", "SR")]
    for tags in derived:
        (instance,) = orthanc.instances_of_series(tags["SeriesInstanceUID"])
        assert instance["MainDicomTags"]["SOPInstanceUID"]
    assert {s["SeriesDescription"] for s in derived} == {
        "immunode PET lesions (RESEARCH USE ONLY)",
        "immunode PET lesion report (RESEARCH USE ONLY)",
    }
