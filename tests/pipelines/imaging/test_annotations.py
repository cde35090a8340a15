"""Reader annotations: SEG segments and RTSTRUCT ROIs are regions on the PET grid (the method's volume of
interest), TID 1500 SR points (3D or on an image) are seeds; organs and planning volumes are not lesions.
The real expert contours of sts_002 and sts_003 (TCIA Soft-tissue-Sarcoma, IBSI/MIRP; CC BY 3.0) check that
the method runs inside the reader's region."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.imaging.annotations import reader_annotations
from pipelines.imaging.geometry import index_to_patient, patient_to_index
from pipelines.imaging.settings import AnnotationSettings
from pipelines.pet.analysis import analyse_pet_series
from pipelines.pet.settings import PetQuantSettings
from pipelines.pet.volume import load_pet_volume
from tests.conftest import SHARED_DATA
from tests.synthetic import DEFAULT_LESIONS, write_rtstruct, write_study

SETTINGS = AnnotationSettings()


def annotation_seeds(paths, frame: str, images: dict):
    """The point seeds of annotations, on a PET grid that does not matter for points."""
    volume = load_pet_volume(list(STUDY_FILES))
    return list(reader_annotations(paths, volume.geometry, frame, images, SETTINGS).seeds)


def annotation_regions(study, paths, frame: str):
    volume = load_pet_volume(list(study.pet_files))
    return reader_annotations(paths, volume.geometry, frame, {}, SETTINGS), volume


STUDY_FILES: list = []


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    written = write_study(tmp_path_factory.mktemp("study"), with_ct=False)
    STUDY_FILES[:] = written.pet_files
    return written


def _near(seed, centre: tuple[float, float, float], tolerance_mm: float) -> bool:  # a ReaderSeed
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


def _centroid(region, volume) -> np.ndarray:
    return index_to_patient(volume.geometry, np.argwhere(region.mask).mean(axis=0))


def test_rtstruct_roi_gives_one_region_each(tmp_path: Path, study) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:2])
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    found, volume = annotation_regions(study, [path], frame)
    assert len(found.regions) == 2 and found.seeds == ()
    for region, truth in zip(found.regions, DEFAULT_LESIONS[:2]):
        assert np.linalg.norm(_centroid(region, volume) - truth.centre_mm) < 3.0
        expected_ml = 4 / 3 * np.pi * truth.radius_mm**3 / 1000
        assert region.mask.sum() * volume.geometry.voxel_volume_ml == pytest.approx(expected_ml, rel=0.35)
    assert annotation_regions(study, [path], "1.2.3.999")[0].regions == ()  # another frame of reference
    assert not any(region.lymph_node for region in found.regions)


def test_rtstruct_roi_named_as_a_node_marks_a_lymph_node(tmp_path: Path, study) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[1:2])
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[0].ROIName = "Mediastinal lymph node 4R"
    ds.save_as(path)
    (region,) = annotation_regions(study, [path], ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID)[
        0
    ].regions
    assert region.lymph_node


def test_organ_contours_are_not_lesions(tmp_path: Path, study) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:2])
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[0].ROIName = "Liver"  # untyped, an organ's name
    ds.RTROIObservationsSequence[0].RTROIInterpretedType = ""
    ds.RTROIObservationsSequence[1].RTROIInterpretedType = "ORGAN"
    ds.save_as(path)
    found, _ = annotation_regions(study, [path], ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID)
    assert found.regions == ()
    assert any("Liver: its name marks an organ" in item for item in found.left_out)
    assert any("RT ROI Interpreted Type ORGAN" in item for item in found.left_out)


def test_seg_segment_gives_its_region(tmp_path: Path, study) -> None:
    path = reader_seg(study, DEFAULT_LESIONS[1], tmp_path / "seg.dcm")
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    found, volume = annotation_regions(study, [path], frame)
    (region,) = found.regions
    assert np.linalg.norm(_centroid(region, volume) - DEFAULT_LESIONS[1].centre_mm) < 2.0


@pytest.mark.parametrize("case", ["sts_002", "sts_003"])
def test_the_method_runs_inside_the_readers_region_on_real_contours(case: str) -> None:
    """The expert's RTSTRUCT on the PET is the volume of interest: the lesion is the voxels >= T inside it
    (widened by the margin), T from that region; not the 2 ml core around the hottest voxel it once was."""
    folder = SHARED_DATA / case / "PET"
    paths = sorted(folder.glob("0*.dcm"))
    params = PetQuantSettings()
    result = analyse_pet_series(paths, params, [folder / "RTSTRUCT_RS.dcm"])
    (lesion,) = result.lesions
    volume = result.volume
    found = reader_annotations(
        [folder / "RTSTRUCT_RS.dcm"], volume.geometry, volume.frame_of_reference_uid, {}, SETTINGS
    )
    (region,) = found.regions
    from scipy import ndimage

    spacing = np.asarray(volume.geometry.spacing_mm[::-1])
    widened = ndimage.distance_transform_edt(~region.mask, sampling=spacing) <= params.reader_margin_mm
    mask = np.zeros(volume.suv.shape, dtype=bool)
    mask[lesion.box()] = lesion.mask
    m = lesion.measurements
    assert not (mask & ~widened).any()  # inside the reader's region (and margin)
    assert np.array_equal(mask, widened & (volume.suv >= m.threshold_suv))  # every voxel >= T in it
    assert m.threshold_suv == pytest.approx(params.beta * m.i70_suv + m.background_suv)
    region_ml = region.mask.sum() * volume.geometry.voxel_volume_ml
    dice = 2 * (mask & region.mask).sum() / (mask.sum() + region.mask.sum())
    assert m.metabolic_volume_ml > 0.4 * region_ml and dice >= {"sts_002": 0.55, "sts_003": 0.85}[case]
    assert result.reader_seeds == 1


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
    volume = load_pet_volume(list(study.pet_files))
    found = reader_annotations([broken], volume.geometry, "1.2.3", {}, SETTINGS)
    assert found.regions == () and found.seeds == () and "broken.dcm: not usable" in found.left_out[0]
