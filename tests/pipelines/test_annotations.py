"""Reader annotations (SEG, RTSTRUCT, TID 1500 SR with 3D or 2D coordinates) become lesion seeds."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.annotations import annotation_seeds
from pipelines.geometry import patient_to_index
from pipelines.pet_volume import load_pet_volume
from tests.synthetic import DEFAULT_LESIONS, write_rtstruct, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"), with_ct=False)


def _near(seed, centre: tuple[float, float, float], tolerance_mm: float) -> bool:  # noqa: ANN001 - a ReaderSeed
    return float(np.linalg.norm(np.subtract(seed.position_mm, centre))) < tolerance_mm


def reader_seg(study, lesion, path: Path) -> Path:
    """A reader's DICOM SEG of one lesion on the PET (the voxels inside its sphere)."""
    volume = load_pet_volume(list(study.pet_files))
    sources = [pydicom.dcmread(p) for p in volume.source_paths]
    centre = patient_to_index(volume.geometry, np.asarray(lesion.centre_mm))
    distance = np.linalg.norm(
        (np.indices(volume.suv.shape).T - centre).T * np.reshape([4.0, 4.0, 4.0], (3, 1, 1, 1)), axis=0
    )
    mask = distance <= lesion.radius_mm
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="reader lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=60,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Reader workstation",
        manufacturer_model_name="manual",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(path)
    return path


def test_rtstruct_roi_gives_one_seed_each(tmp_path: Path, study) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:2])
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    seeds = annotation_seeds([path], frame, {})
    assert len(seeds) == 2 and all(_near(s, t.centre_mm, 1.0) for s, t in zip(seeds, DEFAULT_LESIONS[:2]))
    assert annotation_seeds([path], "1.2.3.999", {}) == []  # another frame of reference
    assert not any(seed.lymph_node for seed in seeds)


def test_rtstruct_roi_named_as_a_node_marks_a_lymph_node(tmp_path: Path, study) -> None:
    import pydicom as dicom

    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[1:2])
    ds = dicom.dcmread(path)
    ds.StructureSetROISequence[0].ROIName = "Mediastinal lymph node 4R"
    ds.save_as(path)
    (seed,) = annotation_seeds(
        [path],
        ds.FrameOfReferenceUID
        if "FrameOfReferenceUID" in ds
        else ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID,
        {},
    )
    assert seed.lymph_node


def test_seg_segment_gives_its_centroid(tmp_path: Path, study) -> None:
    path = reader_seg(study, DEFAULT_LESIONS[1], tmp_path / "seg.dcm")
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    (seed,) = annotation_seeds([path], frame, {})
    assert _near(seed, DEFAULT_LESIONS[1].centre_mm, 2.0)


def _sr(region, evidence: list[pydicom.Dataset], path: Path) -> Path:
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="reader lesion"),
        referenced_region=region,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.LN.PETWholeBody,
        imaging_measurements=[group],
    )
    hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=70,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Reader",
    ).save_as(path)
    return path


def test_sr_points_in_3d_and_on_an_image_give_seeds(tmp_path: Path, study) -> None:
    pet = [pydicom.dcmread(p) for p in study.pet_files]
    frame = pet[0].FrameOfReferenceUID
    lesion = DEFAULT_LESIONS[2]
    point3d = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([lesion.centre_mm]),
        frame_of_reference_uid=frame,
    )
    path3d = _sr(point3d, pet[:1], tmp_path / "sr3d.dcm")
    (seed,) = annotation_seeds([path3d], frame, {})
    assert _near(seed, lesion.centre_mm, 0.01)
    # A 2D point on the slice through the lesion centre, at the pixel of the centre.
    image = min(pet, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - lesion.centre_mm[2]))
    column = (lesion.centre_mm[0] - float(image.ImagePositionPatient[0])) / 4.0 + 0.5
    row = (lesion.centre_mm[1] - float(image.ImagePositionPatient[1])) / 4.0 + 0.5
    point2d = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[column, row]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    path2d = _sr(point2d, [image], tmp_path / "sr2d.dcm")
    (seed,) = annotation_seeds([path2d], frame, {image.SOPInstanceUID: image})
    assert _near(seed, lesion.centre_mm, 2.5)


def test_malformed_annotation_is_skipped(tmp_path: Path, study) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    assert annotation_seeds([broken], "1.2.3", {}) == []
