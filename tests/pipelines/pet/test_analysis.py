"""PET loading, SUV, lesion segmentation and the SEG/SR outputs on synthetic and real data."""

from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from common.states import OutputKind
from pipelines.errors import SeriesNotUsable, SuvNotComputable
from pipelines.output.sr import RESEARCH_USE
from pipelines.pet.analysis import algorithm_identity, analyse_pet_series, summarise
from pipelines.pet.report import cytact_statement, write_pet_report
from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.lesions import sphere_kernel
from pipelines.petlesions.types import Lesion, LesionMeasurements
from pipelines.types import ReaderSeed
from tests.conftest import STS_002, dciodvfy_errors
from tests.synthetic import DEFAULT_LESIONS, write_study


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_synthetic_lesions_found_and_measured(tmp_path: Path, vendor: str) -> None:
    study = write_study(tmp_path, vendor=vendor, with_ct=False)
    result = analyse_pet_series(list(study.pet_files), PetQuantSettings())
    assert len(result.lesions) == len(DEFAULT_LESIONS)
    for truth in DEFAULT_LESIONS:
        nearest = min(
            result.lesions,
            key=lambda found: np.linalg.norm(np.subtract(found.measurements.centroid_mm, truth.centre_mm)),
        )
        m = nearest.measurements
        assert np.linalg.norm(np.subtract(m.centroid_mm, truth.centre_mm)) < 2.0  # half a voxel
        true_volume_ml = 4 / 3 * math.pi * truth.radius_mm**3 / 1000
        # Blurred by a 6 mm PSF on 4 mm voxels: SUVmax within 3 % of truth for these sizes, volume within 30 %.
        assert m.suv_max == pytest.approx(truth.suv, rel=0.03)
        assert m.metabolic_volume_ml == pytest.approx(true_volume_ml, rel=0.3)
        assert m.suv_mean <= m.suv_peak <= m.suv_max
        assert m.total_lesion_glycolysis == pytest.approx(m.suv_mean * m.metabolic_volume_ml)
        assert m.threshold_suv == pytest.approx(0.3 * m.i70_suv + m.background_suv)
        # RECIST diameters on the mask: the sphere's diameter within two 4 mm voxels; all are target-sized.
        assert m.long_axis_mm == pytest.approx(2 * truth.radius_mm, abs=8.0)
        assert m.short_axis_mm <= m.long_axis_mm and m.recist_target


def test_slice_order_comes_from_geometry_not_instance_number(tmp_path: Path) -> None:
    study = write_study(tmp_path, with_ct=False, shape_zyx=(30, 64, 64), lesions=DEFAULT_LESIONS[1:2])
    shuffled = list(reversed(study.pet_files))
    result = analyse_pet_series(shuffled, PetQuantSettings())
    positions = [
        float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in result.volume.source_paths
    ]
    assert positions == sorted(positions)


def test_pet_without_dose_is_refused_with_reason(tmp_path: Path) -> None:
    study = write_study(tmp_path, with_ct=False, shape_zyx=(20, 48, 48), dose_bq=None)
    with pytest.raises(SuvNotComputable, match="RadionuclideTotalDose"):
        analyse_pet_series(list(study.pet_files), PetQuantSettings())


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    study = write_study(tmp_path, with_ct=False, shape_zyx=(20, 48, 48))
    files = list(study.pet_files)
    del files[10]
    with pytest.raises(SeriesNotUsable, match="not uniform"):
        analyse_pet_series(files, PetQuantSettings())


def test_peak_sphere_is_one_millilitre() -> None:
    kernel = sphere_kernel(np.array([1.0, 1.0, 1.0]), 1.0)
    assert kernel.sum() / 1000 == pytest.approx(1.0, rel=0.03)


def _sts_pet() -> list[Path]:
    return sorted(p for p in (STS_002 / "PET").glob("*.dcm") if "RTSTRUCT" not in p.name)


def _gtv_points(folder: Path) -> np.ndarray:
    rtstruct = pydicom.dcmread(folder / "RTSTRUCT_RS.dcm")
    points = [
        np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        for roi in rtstruct.ROIContourSequence
        for c in roi.ContourSequence
    ]
    return np.concatenate(points)


def test_real_sarcoma_lesion_lies_in_its_contour() -> None:
    result = analyse_pet_series(_sts_pet(), PetQuantSettings())
    assert result.volume.conversion.units == "GML"
    gtv = _gtv_points(STS_002 / "PET")
    hottest = result.lesions[0]
    low, high = gtv.min(axis=0), gtv.max(axis=0)
    assert np.all(np.asarray(hottest.measurements.centroid_mm) >= low)
    assert np.all(np.asarray(hottest.measurements.centroid_mm) <= high)
    assert hottest.measurements.suv_max > 10


def test_report_objects_validate_and_read_back(tmp_path: Path) -> None:
    params = PetQuantSettings()
    result = analyse_pet_series(_sts_pet(), params)
    identity = algorithm_identity(params)
    counter = iter(range(100))
    files = write_pet_report(result, identity, summarise(result), None, lambda: tmp_path / f"{next(counter)}.dcm")
    seg_file, sr_file = files
    assert (seg_file.kind, sr_file.kind) == (OutputKind.SEG, OutputKind.SR)
    for file in files:
        assert dciodvfy_errors(file.path) == []
    seg = hd.seg.segread(seg_file.path)
    source = pydicom.dcmread(result.volume.source_paths[0])
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID not in (source.SeriesInstanceUID,)
    assert len(seg.SegmentSequence) == len(result.lesions)
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(result.volume.sop_instance_uids),
        combine_segments=True,
        skip_overlap_checks=True,
    )
    for lesion in result.lesions:
        assert int((labels == lesion.number).sum()) == lesion.measurements.voxel_count
    sr = hd.sr.srread(sr_file.path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != seg.SeriesInstanceUID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    measured = [g for g in groups if g.reference_type == codes.DCM.ReferencedSegment]
    outlines = [g for g in groups if g.reference_type == codes.DCM.ImageRegion]
    assert len(measured) == len(outlines) == len(result.lesions)
    for group, outline, lesion, segment in zip(measured, outlines, result.lesions, seg.SegmentSequence):
        assert group.tracking_uid == outline.tracking_uid == lesion.tracking_uid == segment.TrackingUID
        assert group.tracking_identifier == outline.tracking_identifier == lesion.tracking_identifier
        referenced = group.referenced_segment
        assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(referenced.referenced_segment_numbers) == [lesion.number]
        by_code = {(m.name.value, m.derivation.value if m.derivation else None): m for m in group.get_measurements()}
        names = {m.name.meaning: m for m in group.get_measurements()}
        for statistic, derivation, value in (
            ("SUVmax", codes.SCT.Maximum, lesion.measurements.suv_max),
            ("SUVmean", codes.SCT.Mean, lesion.measurements.suv_mean),
            ("SUVpeak", codes.DCM.PeakValueWithinROI, lesion.measurements.suv_peak),
        ):
            assert names[statistic].value == pytest.approx(value, rel=1e-6)
            assert names[statistic].unit.value == "{SUVbw}g/ml" and names[statistic].derivation == derivation
        # The outline: closed polylines on the lesion's slices, the first on its largest cross-section.
        regions = outline.roi
        assert all(r.graphic_type == hd.sr.GraphicTypeValues.POLYLINE for r in regions)
        assert all(np.array_equal(r.value[0], r.value[-1]) for r in regions)
        on = [str(r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for r in regions]
        areas = lesion.mask.sum(axis=(1, 2))
        uids = result.volume.sop_instance_uids
        assert set(on) == {uids[lesion.offset[0] + i] for i in np.flatnonzero(areas)}
        assert on[0] == uids[lesion.offset[0] + int(np.argmax(areas))]
        assert by_code[("126032", None)].unit.value == "ml"
        assert by_code[("103339001", None)].value == pytest.approx(lesion.measurements.long_axis_mm, rel=1e-6)
        assert by_code[("103340004", None)].unit.value == "mm"
        assert by_code[("126033", None)].value == pytest.approx(lesion.measurements.total_lesion_glycolysis, rel=1e-6)
        algorithm_texts = _texts_named(group[0], "111001") + _texts_named(group[0], "111003")
        assert identity.name in algorithm_texts and identity.version in algorithm_texts
    texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence if "TextValue" in item]
    assert RESEARCH_USE in texts
    assert f"sha256:{identity.parameters_sha256}" in _texts_named(sr, "111002")


def _texts_named(item: pydicom.Dataset, code_value: str) -> list[str]:
    """TextValue of every content item below `item` whose concept name has the code value."""
    found = []
    for child in item.get("ContentSequence", []):
        name = child.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == code_value and "TextValue" in child:
            found.append(child.TextValue)
        found += _texts_named(child, code_value)
    return found


def test_study_without_avid_lesion_gets_an_sr_saying_so_and_no_seg(tmp_path: Path) -> None:
    study = write_study(tmp_path / "in", with_ct=False, shape_zyx=(20, 48, 48), lesions=())
    params = PetQuantSettings()
    result = analyse_pet_series(list(study.pet_files), params)
    assert result.lesions == ()
    counter = iter(range(100))
    files = write_pet_report(
        result, algorithm_identity(params), summarise(result), None, lambda: tmp_path / f"{next(counter)}.dcm"
    )
    (sr_file,) = files
    assert sr_file.kind is OutputKind.SR and dciodvfy_errors(sr_file.path) == []
    sr = hd.sr.srread(sr_file.path)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence if "TextValue" in item]
    assert any(text.startswith("0 FDG-avid lesion(s)") for text in texts)
    assert "260413007" in _codes_named(sr, "121071")  # Finding: None


def _codes_named(item: pydicom.Dataset, code_value: str) -> list[str]:
    """Coded values of every CODE content item below `item` whose concept name has the code value."""
    found = []
    for child in item.get("ContentSequence", []):
        name = child.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == code_value and "ConceptCodeSequence" in child:
            found.append(child.ConceptCodeSequence[0].CodeValue)
        found += _codes_named(child, code_value)
    return found


def _numbers_named(item: pydicom.Dataset, code_value: str) -> list[float]:
    found = []
    for child in item.get("ContentSequence", []):
        name = child.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == code_value and "MeasuredValueSequence" in child:
            found.append(float(child.MeasuredValueSequence[0].NumericValue))
        found += _numbers_named(child, code_value)
    return found


def test_report_carries_lesion_cytact_and_patient_biomarkers(tmp_path: Path) -> None:
    study = write_study(tmp_path / "in", with_ct=False)
    params = PetQuantSettings()
    result = analyse_pet_series(list(study.pet_files), params)
    summary = result.cytact
    assert summary is not None and summary.model.synthetic and result.cytact_model == summary.model
    summarised = [lesion for lesion in result.lesions if lesion.number in summary.lesions]
    assert summarised and all(lesion.measurements.recist_target for lesion in summarised)
    scores = [lesion.cytact for lesion in summarised]
    assert summary.minimum == pytest.approx(min(scores)) and summary.maximum == pytest.approx(max(scores))
    assert summary.variance == pytest.approx(float(np.var(scores, ddof=1)))
    # The -0.107 cut-off belongs to other weights: no group for the shipped synthetic weights.
    assert summary.low_group is None and summary.heterogeneous is None and "other weights" in summary.groups_not_given
    counter = iter(range(100))
    files = write_pet_report(
        result, algorithm_identity(params), summarise(result), None, lambda: tmp_path / f"{next(counter)}.dcm"
    )
    sr_path = next(f.path for f in files if f.kind is OutputKind.SR)
    assert dciodvfy_errors(sr_path) == []
    sr = hd.sr.srread(sr_path)
    groups = [
        g for g in sr.content.get_volumetric_roi_measurement_groups() if g.reference_type == codes.DCM.ReferencedSegment
    ]
    for group, lesion in zip(groups, result.lesions, strict=True):
        assert _numbers_named(group[0], "CYTACT") == [pytest.approx(lesion.cytact, rel=1e-6)]
    # The patient's minimum, mean, maximum and variance: derived measurements, not a group viewers take for a lesion.
    (derived,) = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126011"]
    assert _numbers_named(derived, "CYTACT") == [
        pytest.approx(v, rel=1e-6) for v in (summary.minimum, summary.mean, summary.maximum, summary.variance)
    ]
    (imaging,) = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    assert len(_numbers_named(imaging, "CYTACT")) == len(result.lesions)
    assert _codes_named(sr, "CYTACT_GROUP") == [] and _codes_named(sr, "CYTACT_HET") == []
    texts = " ".join(item.get("TextValue", "") for item in sr.ContentSequence[-1].ContentSequence)
    assert "SYNTHETIC DEMONSTRATION WEIGHTS" in texts and summary.model.weights_sha256 in texts
    assert "RECIST 1.1 target lesions" in texts and "no low/high group" in texts


def test_groups_only_for_the_weights_the_cut_offs_belong_to(tmp_path: Path) -> None:
    from models.cards import SHIPPED_CYTACT_WEIGHTS, verify_card

    study = write_study(tmp_path / "in", with_ct=False, shape_zyx=(40, 64, 64), lesions=DEFAULT_LESIONS[:3])
    sha = verify_card(SHIPPED_CYTACT_WEIGHTS).sha256
    params = PetQuantSettings.model_validate({"cytact": {"cutoffs_weights_sha256": sha}})
    summary = analyse_pet_series(list(study.pet_files), params).cytact
    assert summary.low_group == (summary.minimum < -0.107) and not summary.groups_not_given
    # The paper gives no variance cut-off (it splits a cohort at its median): no heterogeneity group for one patient
    # unless the site sets a cut-off, which the SR then calls the site's.
    assert summary.heterogeneous is None and summary.heterogeneity_cutoff is None
    cytact = {"cutoffs_weights_sha256": sha, "heterogeneity_variance_cutoff": 0.1}
    result = analyse_pet_series(list(study.pet_files), PetQuantSettings.model_validate({"cytact": cytact}))
    assert result.cytact.heterogeneous == (result.cytact.variance > 0.1)
    assert "the site's cut-off 0.1; the paper gives none" in cytact_statement(result)


def _lesion(number: int, long_axis: float, organ: str = "", node: bool = False, target: bool = True) -> Lesion:
    measurements = LesionMeasurements(
        1, 1, 1, 1, 1, 1, 1, 1, 1, (0, 0, 0), long_axis, long_axis if node else 5.0, target, lymph_node=node
    )
    mask = np.ones((1, 1, 1), bool)
    return Lesion(number, f"Lesion {number}", f"1.2.{number}", (0, 0, 0), mask, measurements, organ=organ)


def test_patient_summary_is_over_at_most_five_targets_two_per_organ() -> None:
    from pipelines.pet.cytact import summary_lesions
    from pipelines.pet.settings import CytActSettings

    lesions = (
        _lesion(1, 40, "lung"),
        _lesion(2, 35, "lung"),
        _lesion(3, 30, "lung"),  # third in the lung: not a target
        _lesion(4, 25, "liver"),
        _lesion(5, 8, "liver", target=False),  # below the RECIST size
        _lesion(6, 20, ""),
        _lesion(7, 18, ""),
        _lesion(8, 16, "adrenal gland"),  # the sixth candidate: beyond five
        _lesion(9, 22, "lymph node", node=True),  # a node by its short axis (22 mm)
    )
    chosen, rule = summary_lesions(lesions, CytActSettings())
    assert [lesion.number for lesion in chosen] == [1, 2, 4, 6, 9]
    assert "at most 5 in all and 2 per organ" in rule
    # Organs unknown (no reader site, no CT evidence) count as one organ: two of them may lie in one organ.
    unknown = (_lesion(10, 30, ""), _lesion(11, 25, ""), _lesion(12, 20, ""), _lesion(13, 15, "liver"))
    assert [lesion.number for lesion in summary_lesions(unknown, CytActSettings())[0]] == [10, 11, 13]
    # Liver, adrenal gland and abdominal nodes are three organs (they were one body region, "abdomen").
    abdominal = (_lesion(14, 30, "liver"), _lesion(15, 28, "liver"), _lesion(16, 26, "adrenal gland"))
    abdominal += (_lesion(17, 24, "lymph node", node=True), _lesion(18, 22, "liver"))
    assert [lesion.number for lesion in summary_lesions(abdominal, CytActSettings())[0]] == [14, 15, 16, 17]
    everything, _ = summary_lesions(lesions, CytActSettings(summary_lesions="all"))
    assert len(everything) == len(lesions)


def test_mismatching_weights_leave_cytact_out_and_say_why(tmp_path: Path) -> None:
    from models.cards import card_path
    from models.serving import SHIPPED_CYTACT_WEIGHTS

    tampered = tmp_path / SHIPPED_CYTACT_WEIGHTS.name
    tampered.write_bytes(SHIPPED_CYTACT_WEIGHTS.read_bytes() + b"x")
    card_path(tampered).write_text(card_path(SHIPPED_CYTACT_WEIGHTS).read_text())
    params = PetQuantSettings.model_validate({"cytact": {"weights": str(tampered)}})
    study = write_study(tmp_path / "in", with_ct=False, shape_zyx=(30, 48, 48), lesions=DEFAULT_LESIONS[1:2])
    result = analyse_pet_series(list(study.pet_files), params)
    assert result.cytact is None and "refused" in result.cytact_not_computed
    assert result.lesions[0].measurements.suv_max > 5  # the SUV results stand


def test_seeds_define_the_lesions_in_semi_automatic_mode(tmp_path: Path) -> None:
    from pipelines.petlesions.lesions import segment_lesions
    from pipelines.petlesions.volume import load_pet_volume

    study = write_study(tmp_path / "in", with_ct=False)
    volume = load_pet_volume(list(study.pet_files))
    params = PetQuantSettings()
    automatic = segment_lesions(volume, params)
    # A reader marks two of the four lesions, a few millimetres off their centres, plus a point on nothing.
    seeds = [
        ReaderSeed(tuple(np.add(DEFAULT_LESIONS[0].centre_mm, 4.0))),
        ReaderSeed(tuple(np.subtract(DEFAULT_LESIONS[2].centre_mm, 3.0))),
        ReaderSeed((0.0, -300.0, 0.0)),
    ]
    seeded = segment_lesions(volume, params, seeds)
    assert len(seeded) == 2
    for truth in (DEFAULT_LESIONS[0], DEFAULT_LESIONS[2]):
        lesion = min(seeded, key=lambda s: np.linalg.norm(np.subtract(s.measurements.centroid_mm, truth.centre_mm)))
        assert np.linalg.norm(np.subtract(lesion.measurements.centroid_mm, truth.centre_mm)) < 2.0
        same = min(automatic, key=lambda a: np.linalg.norm(np.subtract(a.measurements.centroid_mm, truth.centre_mm)))
        # The adaptive threshold refines a seeded lesion exactly as it does a detected one.
        assert lesion.measurements.voxel_count == same.measurements.voxel_count


def test_lesions_get_a_coarse_location_from_the_ct(tmp_path: Path) -> None:
    study = write_study(tmp_path / "in")
    result = analyse_pet_series(list(study.pet_files), PetQuantSettings(), ct_paths=list(study.ct_files))
    by_truth = {
        truth.centre_mm: min(
            result.lesions, key=lambda x: np.linalg.norm(np.subtract(x.measurements.centroid_mm, truth.centre_mm))
        )
        for truth in DEFAULT_LESIONS
    }
    assert by_truth[DEFAULT_LESIONS[0].centre_mm].location == "lung"  # the nodule inside the lung
    assert by_truth[DEFAULT_LESIONS[0].centre_mm].organ == "lung"  # ... is a lung lesion (RECIST organ)
    assert by_truth[DEFAULT_LESIONS[2].centre_mm].location == "abdomen"  # the liver metastasis
    assert "below the lung bases" in by_truth[DEFAULT_LESIONS[2].centre_mm].location_evidence
    counter = iter(range(100))
    files = write_pet_report(
        result,
        algorithm_identity(PetQuantSettings()),
        summarise(result),
        None,
        lambda: tmp_path / f"{next(counter)}.dcm",
    )
    sr_path = next(f.path for f in files if f.kind is OutputKind.SR)
    assert dciodvfy_errors(sr_path) == []
    assert "39607008" in _codes_named(hd.sr.srread(sr_path), "363698007")  # Finding Site: Lung
    # Without a CT no location is claimed.
    assert all(
        lesion.location == "" for lesion in analyse_pet_series(list(study.pet_files), PetQuantSettings()).lesions
    )


def test_reader_labelled_lymph_node_uses_the_short_axis_rule(tmp_path: Path) -> None:
    from pipelines.petlesions.lesions import segment_lesions
    from pipelines.petlesions.volume import load_pet_volume

    study = write_study(tmp_path / "in", with_ct=False)
    volume = load_pet_volume(list(study.pet_files))
    node = DEFAULT_LESIONS[1]  # 18 mm across: a target as a lesion (>= 10 mm), and as a node (>= 15 mm)
    small = DEFAULT_LESIONS[3]  # about 20 mm across as well
    (as_node,) = segment_lesions(volume, PetQuantSettings(), [ReaderSeed(node.centre_mm, lymph_node=True)])
    m = as_node.measurements
    assert m.lymph_node and m.recist_target == (m.short_axis_mm >= 15.0)
    (as_lesion,) = segment_lesions(volume, PetQuantSettings(), [ReaderSeed(small.centre_mm)])
    assert not as_lesion.measurements.lymph_node and as_lesion.measurements.recist_target
