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

from pipelines.ct.lesions import ct_lesions, load_ct_volume
from pipelines.ct.settings import CtRadiomicsSettings
from pipelines.imaging.annotations import reader_annotations, reader_source_statements
from pipelines.imaging.contours import classify
from pipelines.imaging.geometry import index_to_patient, patient_to_index
from pipelines.imaging.settings import AnnotationSettings
from pipelines.pet.analysis import analyse_pet_series
from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.volume import load_pet_volume
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


def _sr(region, evidence: list[pydicom.Dataset], path: Path, finding_site=None) -> Path:
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="reader lesion"),
        referenced_region=region,
        finding_sites=[hd.sr.FindingSite(finding_site)] if finding_site is not None else None,
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
    path3d = _sr(point3d, pet[:1], tmp_path / "sr3d.dcm", codes.SCT.Liver)
    (seed,) = annotation_seeds([path3d], frame, {})
    assert _near(seed, lesion.centre_mm, 0.01)
    assert seed.site_text == "Liver"  # the group's Finding Site: the lesion's organ (RECIST two per organ)
    (seeded,) = analyse_pet_series(list(study.pet_files), PetQuantSettings(), [path3d]).lesions
    assert seeded.organ == "liver" and "Liver" in seeded.organ_evidence
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


@pytest.mark.parametrize(
    "name, roi_type, lesion, reason",
    [
        # Real exports type every ROI ORGAN, the GTV included: the TG-263 target name wins, and the SR says so.
        ("GTV-1", "ORGAN", True, "by its TG-263 name (gross tumour volume) although its RT ROI Interpreted Type ORGAN"),
        ("GTVp", "GTV", True, ""),
        ("IGTV_Lung", "", True, ""),
        ("GTV_nodes", "AVOIDANCE", True, "the target name wins"),
        # An organ mistyped GTV: the organ name wins over the type.
        ("Lung_L", "GTV", False, "its name marks an organ or the body outline (TG-263), not a tumour"),
        ("Lungs-GTV", "ORGAN", False, "RT ROI Interpreted Type ORGAN"),  # TG-263: the lungs minus the GTV, an organ
        ("Met liver", "GTV", True, ""),  # a lesion word beside the organ's name: a lesion
        # Planning volumes stay out, by name or by type, whatever the other says.
        ("PTV_High", "GTV", False, "planning volume by its TG-263 name (PTV)"),
        ("CTV_60", "", False, "planning volume by its TG-263 name (CTV)"),
        ("ITV", "GTV", False, "planning volume by its TG-263 name (ITV)"),
        ("Boost", "PTV", False, "planning volume by its RT ROI Interpreted Type PTV"),
        ("Liver", "", False, "its name marks an organ"),
        ("Heart", "ORGAN", False, "RT ROI Interpreted Type ORGAN"),
        ("Mass", "", True, ""),
    ],
)
def test_tg263_names_and_interpreted_types_are_read_together(name: str, roi_type: str, lesion: bool, reason: str):
    decision = classify(name, roi_type, SETTINGS)
    assert decision.lesion is lesion
    assert reason in decision.reason and bool(decision.reason) == bool(reason)


def test_planning_volumes_count_only_when_configured() -> None:
    settings = AnnotationSettings(planning_volumes=["PTV"])
    decision = classify("PTV_High", "PTV", settings)
    assert decision.lesion and "planning_volumes" in decision.reason
    assert not classify("CTV_60", "CTV", settings).lesion
    with pytest.raises(ValueError):
        AnnotationSettings(planning_volumes=["GTV"])


def test_a_gtv_typed_organ_is_a_lesion_and_the_report_states_why(tmp_path: Path, study) -> None:
    """A real lung CT structure set types every ROI ORGAN, GTV-1 included: GTV-1 is the lesion, the decision and
    its reason travel with it (to the SR's statements), the lungs stay out."""
    path = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:2])
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[0].ROIName, ds.StructureSetROISequence[1].ROIName = "GTV-1", "Lung_L"
    for observation in ds.RTROIObservationsSequence:
        observation.RTROIInterpretedType = "ORGAN"
    ds.save_as(path)
    frame = ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    found, _ = annotation_regions(study, [path], frame)
    (region,) = found.regions
    (source,) = region.sources
    assert region.label == "GTV-1" and source.roi_type == "ORGAN" and source.sop_instance_uid == ds.SOPInstanceUID
    assert "the target name wins" in source.decision
    assert found.left_out == ("Lung_L: RT ROI Interpreted Type ORGAN",)
    result = analyse_pet_series(list(study.pet_files), PetQuantSettings(), [path])
    (lesion,) = result.lesions
    (line,) = reader_source_statements(result.lesions)
    assert line.startswith("Lesion 1: reader annotation(s) GTV-1 (RTSTRUCT " + ds.SOPInstanceUID)
    assert "the target name wins" in line


@pytest.mark.parametrize("case", ["sts_002", "sts_003"])
def test_a_tumour_contoured_on_the_pet_and_on_the_ct_is_one_lesion_naming_both(case: str) -> None:
    """sts_002/sts_003 hold one RTSTRUCT drawn on the PET and one drawn on the CT of the same tumour. On either grid
    they are one lesion whose sources name both objects; its extent is the region drawn on that grid's modality, so
    the PET lesion and the CT lesion equal those of the one contour drawn on each."""
    folder = SHARED_DATA / case
    both = [folder / "PET" / "RTSTRUCT_RS.dcm", folder / "CT" / "RTSTRUCT_RS.dcm"]
    uids = [str(pydicom.dcmread(path).SOPInstanceUID) for path in both]
    pet_paths = sorted((folder / "PET").glob("0*.dcm"))
    params = PetQuantSettings()
    (merged,) = analyse_pet_series(pet_paths, params, both).lesions
    (pet_only,) = analyse_pet_series(pet_paths, params, both[:1]).lesions
    assert [s.sop_instance_uid for s in merged.sources] == uids
    assert [s.label for s in merged.sources] == ["GTV_Mass_PET", "GTV_Mass_CT"]
    assert "one tumour annotated 2 times" in merged.merge_note and "extent from GTV_Mass_PET" in merged.merge_note
    assert np.array_equal(merged.mask, pet_only.mask) and merged.offset == pet_only.offset
    (line,) = reader_source_statements([merged])
    assert all(uid in line for uid in uids)
    ct = load_ct_volume(sorted((folder / "CT").glob("0*.dcm")))
    (ct_lesion,), _, _, _ = ct_lesions(ct, both, [], CtRadiomicsSettings(), params)
    (ct_only,), _, _, _ = ct_lesions(ct, both[1:], [], CtRadiomicsSettings(), params)
    assert [s.sop_instance_uid for s in ct_lesion.sources] == uids[::-1]  # the CT's own contour first: the extent
    assert np.array_equal(ct_lesion.mask, ct_only.mask) and ct_lesion.label == "GTV_Mass_CT + GTV_Mass_PET"


def test_a_seg_and_an_rtstruct_of_one_lesion_merge_and_distinct_lesions_do_not(tmp_path: Path, study) -> None:
    seg = reader_seg(study, DEFAULT_LESIONS[1], tmp_path / "seg.dcm")
    rtstruct = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:3])  # L2 is the SEG's lesion
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    found, _ = annotation_regions(study, [rtstruct, seg], frame)
    assert sorted(region.label for region in found.regions) == ["L1", "L2 + reader lesion", "L3"]
    merged = next(region for region in found.regions if "+" in region.label)
    assert merged.kind == "RTSTRUCT+SEG" and "union: none known to be drawn on this grid" in merged.merge_note
    overlap = float(merged.merge_note.split("reader lesion ")[1].split(" %")[0]) / 100
    # Asked for more overlap than the two share, they stay two lesions.
    volume = load_pet_volume(list(study.pet_files))
    strict = AnnotationSettings(merge_overlap=min(overlap + 0.01, 1.0))
    if overlap < 1.0:
        assert len(reader_annotations([rtstruct, seg], volume.geometry, frame, {}, strict).regions) == 4
    lesions = analyse_pet_series(list(study.pet_files), PetQuantSettings(), [rtstruct, seg]).lesions
    assert len(lesions) == 3 and sum(len(lesion.sources) for lesion in lesions) == 4


def test_two_rois_of_one_structure_set_are_kept_apart_however_they_overlap(tmp_path: Path, study) -> None:
    """A reader who drew two ROIs in one structure set on one image meant two (a lesion and its necrotic core, a
    node inside a conglomerate): they are not merged."""
    lesion = DEFAULT_LESIONS[2]
    inner = type(lesion)(lesion.centre_mm, lesion.radius_mm / 2, lesion.suv)
    path = write_rtstruct(tmp_path / "rs.dcm", study, (lesion, inner))
    frame = pydicom.dcmread(study.pet_files[0]).FrameOfReferenceUID
    found, _ = annotation_regions(study, [path], frame)
    assert sorted(region.label for region in found.regions) == ["L1", "L2"]


def test_a_ct_structure_set_typing_every_roi_organ_still_gives_its_gtv(tmp_path: Path) -> None:
    """The real lung CT whose structure set typed every ROI ORGAN: the CT job failed "no lesions". Now the GTV is the
    lesion, the organs stay out."""
    from tests.synthetic_ct import BASELINE_LESIONS, write_ct_study

    written = write_ct_study(tmp_path, BASELINE_LESIONS[:2], "20260101")
    ds = pydicom.dcmread(written.rtstruct)
    ds.StructureSetROISequence[0].ROIName, ds.StructureSetROISequence[1].ROIName = "GTV-1", "Lung-Left"
    for observation in ds.RTROIObservationsSequence:
        observation.RTROIInterpretedType = "ORGAN"
    ds.save_as(written.rtstruct)
    ct = load_ct_volume(written.ct_files)
    (lesion,), _, _, left_out = ct_lesions(ct, [written.rtstruct], [], CtRadiomicsSettings(), PetQuantSettings())
    assert lesion.label == "GTV-1" and "the target name wins" in lesion.sources[0].decision
    assert [(item.label, item.reason) for item in left_out] == [("Lung-Left", "RT ROI Interpreted Type ORGAN")]
