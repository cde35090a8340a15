"""Reader in the loop, end to end: dcmtk storescu plays the scanner and the reader's workstation, Orthanc (or
dcmtk storescp) the PACS. The node's first report holds automatic lesion *candidates*; a reader's SEG sent
later, from another AE, makes a new version within seconds: its SR names the first in the Predecessor
Documents Sequence, keeps the tracking UIDs of the candidates the reader confirmed, names the reader as an
observer, stays UNVERIFIED and says why; its series numbers are new. A study that grows after its analysis
(half-sent) gets a new version the same way, saying why. `immunode status` and the status page show the chain."""

from __future__ import annotations

import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import yaml
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from sqlalchemy import select

from immunode.cli import main as cli_main
from immunode.snapshot import take_snapshot
from immunode.status_page import render
from pipelines.imaging.geometry import patient_to_index
from pipelines.petlesions.volume import load_pet_volume
from storage.schema import Instance, Job, Output
from tests.conftest import StoreSCP, dciodvfy_errors, storescu, wait_until
from tests.sr_content import sr_texts
from tests.synthetic import DEFAULT_LESIONS, write_study

READER = "Reader^Rita"
PEERS = {
    "allowed": [
        {"ae_title": "STORESCU", "host": "127.0.0.1"},
        {"ae_title": "READSTATION", "host": "127.0.0.1"},
    ]
}


def reader_seg(study, lesions, path: Path) -> Path:
    """A reader's SEG on the PET, drawn at another workstation: one segment per lesion (its sphere)."""
    volume = load_pet_volume(list(study.pet_files))
    sources = [pydicom.dcmread(p) for p in volume.source_paths]
    grid = np.indices(volume.suv.shape).T
    masks = []
    for lesion in lesions:
        centre = patient_to_index(volume.geometry, np.asarray(lesion.centre_mm))
        distance = np.linalg.norm((grid - centre).T * np.reshape([4.0, 4.0, 4.0], (3, 1, 1, 1)), axis=0)
        masks.append(distance <= lesion.radius_mm)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"reader lesion {number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number in range(1, len(lesions) + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.stack(masks, axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=990,  # the reader's workstation happens to use the node's first SEG number
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Reader workstation",
        manufacturer_model_name="manual",
        software_versions="1",
        device_serial_number="1",
        content_creator_name=READER,
    )
    seg.save_as(path)
    return path


def _segments(seg: pydicom.Dataset) -> dict[str, str]:
    """Segment label -> tracking UID."""
    return {str(s.SegmentLabel): str(s.TrackingUID) for s in seg.SegmentSequence}


def _observers(sr: pydicom.Dataset) -> dict[str, str]:
    """The document's observation context: concept meaning -> value (observer type, names)."""
    found = {}
    for item in sr.ContentSequence:
        meaning = str(item.ConceptNameCodeSequence[0].CodeMeaning)
        if item.ValueType == "PNAME":
            found[meaning] = str(item.PersonName)
        elif item.ValueType in ("TEXT", "UIDREF") and meaning.startswith("Device Observer"):
            found[meaning] = str(item.get("TextValue", item.get("UID", "")))
        elif item.ValueType == "CODE" and meaning == "Observer Type":
            found.setdefault("types", "")
            found["types"] += str(item.ConceptCodeSequence[0].CodeMeaning) + ";"
    return found


def _statuses(sr: pydicom.Dataset) -> list[str]:
    sr_document = hd.sr.Comprehensive3DSR.from_dataset(sr)
    found = []
    for group in sr_document.content.get_volumetric_roi_measurement_groups():
        for evaluation in group.get_qualitative_evaluations():
            if evaluation.name.value == "LESION_STATUS":
                found.append(evaluation.value.value)
    return found


def _predecessor(sr: pydicom.Dataset) -> str:
    item = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    return str(item.ReferencedSOPInstanceUID)


def _orthanc_objects(orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """Every SEG and SR Orthanc holds in the study, read from the files it stored."""
    import io

    found = []
    for series in orthanc.series_of_study(study_uid):
        if series.get("Modality") in ("SEG", "SR"):
            for instance in orthanc.instances_of_series(series["SeriesInstanceUID"]):
                found.append(pydicom.dcmread(io.BytesIO(orthanc.file(instance["ID"]))))
    return found


def _by(objects: list[pydicom.Dataset], modality: str) -> list[pydicom.Dataset]:
    return sorted((o for o in objects if o.Modality == modality), key=lambda o: int(o.SeriesNumber))


def test_a_readers_seg_supersedes_the_automatic_candidates_within_seconds(
    tmp_path: Path, make_settings, start_node, orthanc, capsys
) -> None:
    study = write_study(tmp_path / "scanner", vendor="ge", shape_zyx=(48, 64, 64), lesions=DEFAULT_LESIONS[:3])
    settings = make_settings(
        peers=PEERS,
        # Images wait for the study to be quiet for 20 s; a reader's annotation on an analysed study for 1 s.
        routing={"study_stable_s": 20.0, "annotation_stable_s": 1.0},
        destinations=[
            {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
        ],
    )
    node = start_node(settings)
    assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
    first = wait_until(
        lambda: len(objects := _orthanc_objects(orthanc, study.study_uid)) >= 2 and objects, timeout_s=240
    )
    (seg_v1,), (sr_v1,) = _by(first, "SEG"), _by(first, "SR")
    # Version 1: automatic candidates, said to be so, ranked, by the device, the cap stated.
    candidates = _segments(seg_v1)
    assert sorted(candidates) == ["Candidate 1", "Candidate 2", "Candidate 3"]
    assert (int(seg_v1.SeriesNumber), int(sr_v1.SeriesNumber)) == (990, 991)
    assert {str(s.SegmentAlgorithmType) for s in seg_v1.SegmentSequence} == {"AUTOMATIC"}
    texts = sr_texts(sr_v1.ContentSequence)
    assert "Automatic lesion candidates, not confirmed by a reader: 3 candidate(s)" in texts
    assert "at most 50 reported (pipelines.pet_quant.max_lesions)" in texts
    assert _statuses(sr_v1) == ["UNCONFIRMED"] * 3
    assert "Device" in _observers(sr_v1)["types"] and "Person" not in _observers(sr_v1)["types"]
    assert "PredecessorDocumentsSequence" not in sr_v1 and sr_v1.VerificationFlag == "UNVERIFIED"

    # The reader confirms two of the three, at another workstation, later.
    seg_file = reader_seg(study, (DEFAULT_LESIONS[0], DEFAULT_LESIONS[2]), tmp_path / "reader-seg.dcm")
    sent = time.monotonic()
    assert storescu(node.port, [seg_file], calling="READSTATION", extra=["--required"]).returncode == 0
    objects = wait_until(
        lambda: len(found := _orthanc_objects(orthanc, study.study_uid)) >= 4 and found, timeout_s=120
    )
    delay_s = time.monotonic() - sent
    segs, srs = _by(objects, "SEG"), _by(objects, "SR")
    assert len(segs) == 2 and len(srs) == 2  # only our results go to the PACS
    seg_v2, sr_v2 = segs[1], srs[1]
    for index, found in enumerate(objects):
        found.save_as(tmp_path / f"from-orthanc-{index}.dcm")
        assert dciodvfy_errors(tmp_path / f"from-orthanc-{index}.dcm") == []
    # The new version supersedes the first, in new series (not 990: the reader's own SEG took it, nor 991).
    assert _predecessor(sr_v2) == str(sr_v1.SOPInstanceUID)
    assert (int(seg_v2.SeriesNumber), int(sr_v2.SeriesNumber)) == (1000, 1001)
    assert {str(s.SegmentAlgorithmType) for s in seg_v2.SegmentSequence} == {"SEMIAUTOMATIC"}
    confirmed = _segments(seg_v2)
    assert len(confirmed) == 2 and set(confirmed.values()) <= set(candidates.values())  # same tracking UIDs
    assert _statuses(sr_v2) == ["READER_CONFIRMED"] * 2
    assert sr_v2.VerificationFlag == "UNVERIFIED"
    observers = _observers(sr_v2)
    assert "Person" in observers["types"] and "Device" in observers["types"]
    assert observers["Person Observer Name"] == READER
    texts = sr_texts(sr_v2.ContentSequence)
    assert "Report version 2: a reader's annotation arrived after the analysis" in texts
    assert "from READSTATION" in texts
    assert f"Supersedes the report SR {sr_v1.SOPInstanceUID}" in texts
    assert f"Lesions confirmed by the reader: defined by the reader's annotations {READER}" in texts
    assert "VerificationFlag UNVERIFIED" in texts and "PS3.3 C.17.2" in texts
    assert "Same lesion as in the previous version, same tracking UID" in texts
    assert "Not in this version (withdrawn): Candidate" in texts
    # Routed after the annotation quiet time, not the study's: the new version was out within 20 s.
    with node.database.session() as session:
        received = session.scalar(select(Instance.received_at).where(Instance.sop_class_uid == seg_v2.SOPClassUID))
        job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        sent_at = session.scalar(select(Output.created_at).where(Output.sop_instance_uid == sr_v2.SOPInstanceUID))
    assert (job.created_at - received).total_seconds() < settings.routing.study_stable_s
    assert "a reader's annotation arrived" in job.reason
    with capsys.disabled():
        print(f"\nreader SEG sent -> version 2 in Orthanc: {delay_s:.1f} s (its SR written {sent_at - received} after)")
    assert delay_s < 20.0, delay_s

    # The chain of versions, as `immunode status` and the status page show it.
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    capsys.readouterr()
    assert cli_main(["--config", str(config), "status"]) == 0
    shown = capsys.readouterr().out
    assert f"study {study.study_uid}" in shown
    assert "pet_quant v1" in shown and "series 990, 991" in shown
    assert "pet_quant v2" in shown and f"(supersedes {sr_v1.SOPInstanceUID})" in shown
    page = render(take_snapshot(settings, node.database), 10)
    assert "Result versions" in page and "v2" in page and "series 1000, 1001" in page


def test_a_study_that_grows_after_its_analysis_gets_a_new_version(
    tmp_path: Path, make_settings, pacs: StoreSCP, start_node
) -> None:
    """Half-sent: the PET is analysed before the CT arrives; the CT makes version 2 (anatomy for the same
    candidates): new series numbers, the first SR as predecessor, the same tracking UIDs, the reason stated."""
    study = write_study(tmp_path / "scanner", shape_zyx=(40, 64, 64), lesions=DEFAULT_LESIONS[:2])
    destination = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
    node = start_node(make_settings(destinations=[destination]))
    assert storescu(node.port, list(study.pet_files)).returncode == 0
    wait_until(lambda: len(pacs.received()) >= 2, timeout_s=180)
    assert storescu(node.port, list(study.ct_files)).returncode == 0
    wait_until(lambda: len(pacs.received()) >= 4, timeout_s=180)
    objects = [pydicom.dcmread(p) for p in pacs.received()]
    for path in pacs.received():
        assert dciodvfy_errors(path) == [], path
    (seg_v1, seg_v2), (sr_v1, sr_v2) = _by(objects, "SEG"), _by(objects, "SR")
    numbers = [int(o.SeriesNumber) for o in objects]
    assert sorted(numbers) == [990, 991, 1000, 1001] and len(set(numbers)) == 4  # never reused
    assert seg_v1.SeriesInstanceUID != seg_v2.SeriesInstanceUID  # one result series per version
    assert _predecessor(sr_v2) == str(sr_v1.SOPInstanceUID)
    assert set(_segments(seg_v2).values()) == set(_segments(seg_v1).values())  # the same candidates
    texts = sr_texts(sr_v2.ContentSequence)
    assert "Report version 2: the study grew after its analysis (revision 2)" in texts
    assert " CT instance(s) of series " in texts and "from STORESCU" in texts
    assert "Same lesion as in the previous version" in texts
    assert "Report version 1: first analysis of the study" in sr_texts(sr_v1.ContentSequence)
