"""The longitudinal CT method on a synthetic pair with known changes (no network): lesion roles, tracking
after a known patient shift, RECIST 1.1 figures, resistance pattern, Δ features, the published signature and
the optional classifier; lesions from PET when the CT has no annotation; the research statistics."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.types import Baseline, BaselineLesion, LesionRole, PriorAssessment
from immunode.cli import main as cli_main
from models import ar_signature
from pipelines.ct.analysis import analyse_ct_study, carried_roles
from pipelines.ct.delta import read_published_signature
from pipelines.ct.lesions import ct_lesions, load_ct_volume
from pipelines.ct.settings import CtRadiomicsSettings
from pipelines.ct.tracking import assess
from pipelines.ct.types import CtLesion, LesionChange, Resistance, relative_change
from pipelines.errors import NothingToAnalyse
from pipelines.imaging.settings import AnnotationSettings
from pipelines.pet.settings import PetQuantSettings
from tests.conftest import SHARED_DATA
from tests.synthetic import write_study
from tests.synthetic_ct import BASELINE_LESIONS, FOLLOW_UP_LESIONS, SHIFT_MM, CtLesionSpec, write_ct_study

PUBLISHED = SHARED_DATA / "delta_radiomics_published.csv"


def _baseline(result) -> Baseline:  # as the store gives it back to the follow-up job
    return Baseline(
        result.study_instance_uid,
        None,
        result.ct_paths,
        tuple(
            BaselineLesion(
                lesion.tracking_uid,
                lesion.tracking_identifier,
                lesion.role,
                lesion.lymph_node,
                lesion.centroid_mm,
                lesion.long_axis_mm,
                lesion.short_axis_mm,
                lesion.volume_ml,
            )
            for lesion in result.lesions
        ),
        {f.volume: f.features for f in result.features if f.volume in ("P", "M")},
    )


@pytest.fixture(scope="module")
def baseline_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t0")
    study = write_ct_study(folder, BASELINE_LESIONS, "20260105")
    settings = CtRadiomicsSettings(published_signature=PUBLISHED)
    return analyse_ct_study(
        study.ct_files, [study.rtstruct], [], settings, PetQuantSettings(), None, "first CT", folder
    )


def _signature(tmp_path: Path) -> Path:
    """A classifier over the 15 published features, fitted on a synthetic cohort (planted signal)."""
    names = [f.name for f in read_published_signature(PUBLISHED)]
    rng = np.random.default_rng(0)
    systemic = np.arange(40) % 2 == 1
    table = rng.normal(0, 1, (40, len(names))) + systemic[:, None] * 1.5
    signature = ar_signature.fit(table, names, systemic)
    ar_signature.save(signature, tmp_path / "sig" / "ar-signature.pt", "synthetic test cohort", True, {})
    return tmp_path / "sig" / "ar-signature.pt"


def test_follow_up_tracked_measured_and_compared(tmp_path: Path, baseline_result) -> None:
    t0 = baseline_result
    assert t0.time_point == "T0" and t0.recist is None and not t0.deltas
    roles = {lesion.label: lesion.role for lesion in t0.lesions}
    assert roles["Primary tumour"] is LesionRole.PRIMARY and list(roles.values()).count(LesionRole.PRIMARY) == 1
    assert {f.volume for f in t0.features} == {"P", "M", "L1", "L2", "L3", "L4"}
    # The merged metastases volume is the union of the three metastases.
    voxels = {f.volume: f.voxel_count for f in t0.features}
    assert voxels["M"] == sum(voxels[f"L{n.number}"] for n in t0.lesions if n.role is LesionRole.METASTASIS)

    study = write_ct_study(tmp_path, FOLLOW_UP_LESIONS, "20260316", shift_mm=SHIFT_MM, seed=2)
    settings = CtRadiomicsSettings(published_signature=PUBLISHED, ar_signature=_signature(tmp_path))
    t1 = analyse_ct_study(
        study.ct_files, [study.rtstruct], [], settings, PetQuantSettings(), _baseline(t0), "paired", tmp_path
    )
    assert t1.time_point == "T1" and t1.registration.startswith("rigid")
    before = {lesion.label: lesion for lesion in t0.lesions}
    after = {lesion.label: lesion for lesion in t1.lesions}
    changes = {c.tracking_uid: c for c in t1.changes}
    for label in ("Primary tumour", "Met liver", "LN mediastinal"):
        assert after[label].tracking_uid == before[label].tracking_uid
        # Centroids 6, -4, 9 mm apart in the scanner map onto each other after registration.
        assert changes[after[label].tracking_uid].distance_mm < 3.0
    assert {changes[after[label].tracking_uid].status for label in ("Met new", "Met new 2")} == {"new"}
    assert changes[before["Met liver 2"].tracking_uid].status == "disappeared"
    # Diameters follow the spheres (radius 12 -> 15 mm; 3 mm in-plane voxels).
    assert before["Primary tumour"].long_axis_mm == pytest.approx(24 + 3, abs=3.5)
    assert after["Primary tumour"].long_axis_mm == pytest.approx(30 + 3, abs=3.5)
    assert after["LN mediastinal"].lymph_node and not after["Met liver"].lymph_node
    recist = t1.recist
    targets = [before[label] for label in ("Primary tumour", "Met liver", "LN mediastinal", "Met liver 2")]
    assert recist.sum_t0_mm == pytest.approx(sum(t.recist_diameter_mm for t in targets))
    expected_t1 = sum(after[label].recist_diameter_mm for label in ("Primary tumour", "Met liver", "LN mediastinal"))
    assert recist.sum_t1_mm == pytest.approx(expected_t1)
    assert recist.percent_change == pytest.approx((recist.sum_t1_mm - recist.sum_t0_mm) / recist.sum_t0_mm * 100)
    assert recist.category == "PD"  # new lesions
    assert (recist.new_lesions, recist.progressive_lesions) == (2, 1)
    # A progression at the first assessment follows no response: primary, not acquired resistance, no pattern.
    assert (recist.assessment, recist.resistance, recist.pattern, recist.best_response) == (
        1,
        Resistance.PRIMARY,
        "",
        "PD",
    )
    assert recist.nadir_mm == pytest.approx(recist.sum_t0_mm)
    assert after["Primary tumour"].role is LesionRole.PRIMARY and "carried from the baseline" in t1.primary_reason
    assert changes[after["Primary tumour"].tracking_uid].progressive
    # Δ of every feature of P and M; the published fifteen with their nearer group median.
    t0_p = next(f for f in t0.features if f.volume == "P").features
    t1_p = next(f for f in t1.features if f.volume == "P").features
    for name in ("original_glcm_ClusterTendency", "wavelet-LLL_glrlm_RunEntropy", "original_shape_VoxelVolume"):
        assert t1.deltas[f"P_{name}"] == pytest.approx((t1_p[name] - t0_p[name]) / t0_p[name])
    assert len(t1.signature_features) == 15
    for feature in t1.signature_features:
        assert feature.delta == pytest.approx(t1.deltas[feature.name])
        nearer_oligo = abs(feature.delta - feature.oligo_median) < abs(feature.delta - feature.systemic_median)
        assert feature.nearer == ("oligo" if nearer_oligo else "systemic")
    # The classifier tells oligo- from systemic acquired resistance: no class for a patient without it.
    assert t1.signature_class is None and "acquired resistance" in t1.signature_class_not_given


def test_progression_after_a_response_is_acquired_resistance_counted_there(tmp_path: Path, baseline_result) -> None:
    new = tuple(
        CtLesionSpec(f"Met new {i}", (x, -35, z), 6)
        for i, (x, z) in enumerate([(-80, -40), (80, 0), (-20, -55), (30, 50)])
    )
    study = write_ct_study(tmp_path, BASELINE_LESIONS + new, "20260316", seed=3)
    settings = CtRadiomicsSettings(per_lesion_features=False, ar_signature=_signature(tmp_path))
    # T1 was a partial response: this second assessment's progression is acquired resistance.
    t1_deltas = {f.name: 0.1 for f in read_published_signature(PUBLISHED)}
    first = PriorAssessment("1.2.3.1", None, 1, 40.0, "PR", deltas=t1_deltas)
    baseline = replace(_baseline(baseline_result), assessments=(first,))
    t2 = analyse_ct_study(study.ct_files, [study.rtstruct], [], settings, PetQuantSettings(), baseline, "p", tmp_path)
    assert {f.volume for f in t2.features} == {"P", "M"}
    recist = t2.recist
    assert (recist.new_lesions, recist.progressive_lesions, recist.pattern) == (4, 0, "systemic")
    assert (recist.assessment, recist.resistance, recist.best_response, recist.nadir_mm) == (
        2,
        Resistance.ACQUIRED,
        "PR",
        40.0,
    )
    assert t2.time_point == "T2" and not t2.deltas  # the method's Δ features are T1 against T0
    assert "T1 against T0" in t2.signature_not_reported
    # At the progression that is acquired resistance, the classifier gives its class from the course's T1 Δ.
    assert t2.signature_class is not None and t2.signature_class.model.synthetic
    signature, _ = ar_signature.load(settings.ar_signature)
    assert t2.signature_class.probability_systemic == pytest.approx(signature.probability_systemic(t1_deltas))
    without = replace(baseline, assessments=(replace(first, deltas=None),))
    t2 = analyse_ct_study(study.ct_files, [study.rtstruct], [], settings, PetQuantSettings(), without, "p", tmp_path)
    assert t2.signature_class is None and "T1 delta features" in t2.signature_class_not_given


def _change(uid: str, t0: float, t1: float | None, status: str = "matched", progressive: bool = False) -> LesionChange:
    return LesionChange(uid, uid, status, t0, t1, None, None, None, progressive)


def test_recist_over_time_nadir_best_response_and_resistance() -> None:
    settings = CtRadiomicsSettings()
    baseline = [
        BaselineLesion(f"L{i}", f"L{i}", LesionRole.METASTASIS, False, (0, 0, 0), 50.0, 30.0, 10.0) for i in (1, 2)
    ]
    shrunk = [_change("L1", 50, 30), _change("L2", 50, 30)]  # sum 100 -> 60: PR
    regrown = [_change("L1", 50, 38), _change("L2", 50, 38)]  # 76: -24 % from baseline, +27 % over the nadir 60
    first = assess(baseline, shrunk, settings)
    assert (first.category, first.best_response, first.resistance) == ("PR", "PR", Resistance.NONE)
    prior = (PriorAssessment("1.2.1", None, 1, first.sum_t1_mm, first.category),)
    later = assess(baseline, regrown, settings, prior, weeks=24.0)
    assert later.nadir_mm == pytest.approx(60.0) and later.category == "PD"  # progression from the nadir
    assert (later.resistance, later.pattern, later.assessment) == (Resistance.ACQUIRED, "oligo", 2)
    stable = (PriorAssessment("1.2.1", None, 1, 100.0, "SD"),)
    grown = [_change("L1", 50, 61), _change("L2", 50, 61), _change("L3", 0, 20, "new")]
    assert assess(baseline, grown, settings, stable, weeks=30.0).resistance is Resistance.ACQUIRED  # SD >= 6 months
    assert assess(baseline, grown, settings, stable, weeks=20.0).resistance is Resistance.PRIMARY
    assert assess(baseline, grown, settings).resistance is Resistance.PRIMARY  # PD at the first assessment


def test_the_primary_is_carried_by_tracking_not_chosen_again(baseline_result) -> None:
    t0 = _baseline(baseline_result)
    primary = next(b for b in t0.lesions if b.role is LesionRole.PRIMARY)
    other = next(b for b in t0.lesions if b.role is LesionRole.METASTASIS)
    mask = np.ones((1, 1, 1), bool)
    tracked = [
        CtLesion(
            1, other.tracking_identifier, other.tracking_uid, (0, 0, 0), mask, LesionRole.PRIMARY, "a", "x", False
        ),
        CtLesion(
            2,
            primary.tracking_identifier,
            primary.tracking_uid,
            (0, 0, 0),
            mask,
            LesionRole.METASTASIS,
            "a",
            "y",
            False,
        ),
    ]
    lesions, reason = carried_roles(tracked, t0)
    assert [lesion.role for lesion in lesions] == [LesionRole.METASTASIS, LesionRole.PRIMARY]
    gone, reason = carried_roles(tracked[:1], t0)
    assert gone[0].role is LesionRole.METASTASIS and "not found at this follow-up" in reason


def test_relative_change_rule_for_a_zero_baseline() -> None:
    assert relative_change(2.0, 3.0) == pytest.approx(0.5)
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.0, 1.0) is None  # not defined: reported as such, never a made-up number
    assert relative_change(None, 1.0) is None


def test_pet_lesions_on_the_ct_grid_when_the_ct_has_no_annotation(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    ct = load_ct_volume(study.ct_files)
    lesions, source, reason, _ = ct_lesions(ct, [], study.pet_files, CtRadiomicsSettings(), PetQuantSettings())
    assert source == "pet" and len(lesions) == 4
    # The largest (the 15 mm liver metastasis) is the primary under the default rule.
    primary = [lesion for lesion in lesions if lesion.role is LesionRole.PRIMARY]
    assert len(primary) == 1 and "rule 'largest'" in reason
    assert np.allclose(primary[0].centroid_mm, (30.0, 30.0, -40.0), atol=4.0)
    none_rule = CtRadiomicsSettings(primary_rule="none")
    lesions, _, reason, _ = ct_lesions(ct, [], study.pet_files, none_rule, PetQuantSettings())
    assert all(lesion.role is LesionRole.METASTASIS for lesion in lesions) and "rule 'none'" in reason
    with pytest.raises(NothingToAnalyse, match="no lesions defined on the CT"):
        ct_lesions(ct, [], [], CtRadiomicsSettings(), PetQuantSettings())


def test_analyse_radiomics_and_train_signature_from_a_table(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    systemic = np.arange(30) % 3 == 0
    separated = rng.normal(0, 0.2, 30) + systemic * 1.0
    table = tmp_path / "deltas.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["PatientID", "IssuerOfPatientID", "pattern", "P_a", "P_a_twice", "M_noise"])
        for i in range(30):
            writer.writerow(
                [f"P{i}", "H", "systemic" if systemic[i] else "oligo", separated[i], 2 * separated[i], rng.normal()]
            )
    out = tmp_path / "analysis"
    assert cli_main(["analyse-radiomics", "--table", str(table), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 Δ features, 2 kept" in printed
    assert (out / "kept_features.txt").read_text().split() == ["P_a", "M_noise"]  # P_a_twice: |rho| = 1
    rows = {row["feature"]: row for row in csv.DictReader((out / "feature_tests.csv").open())}
    assert float(rows["P_a"]["auc"]) > 0.95 and float(rows["P_a"]["mann_whitney_p"]) < 0.001
    assert float(rows["P_a"]["permutation_p"]) < 0.01 and float(rows["M_noise"]["permutation_p"]) > 0.01
    assert (
        cli_main(
            [
                "train",
                "ar-signature",
                "--table",
                str(table),
                "--features",
                "P_a,M_noise",
                "--synthetic",
                "--out",
                str(tmp_path / "sig"),
            ]
        )
        == 0
    )
    signature, card = ar_signature.load(tmp_path / "sig" / "ar-signature.pt")
    assert card.synthetic_training_data and card.metrics["patients"] == 30
    assert (
        signature.probability_systemic({"P_a": 1.0, "M_noise": 0.0})
        > 0.5
        > signature.probability_systemic({"P_a": 0.0, "M_noise": 0.0})
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("PatientID,pattern,P_a\nP1,progressive,1\n")
    assert cli_main(["analyse-radiomics", "--table", str(bad), "--out", str(out)]) == 1
    assert "bad.csv: row 2, column 'pattern': pattern must be oligo or systemic" in capsys.readouterr().err


def test_rigid_then_deformable_registration_recovers_the_shift(tmp_path: Path) -> None:
    from pipelines.ct.settings import RegistrationSettings
    from pipelines.ct.tracking import register
    from pipelines.imaging.geometry import to_sitk

    # 24 slices (96 mm, the checked point at z 30 mm inside) instead of 36: the B-spline stage dominates the time.
    shape = (24, 80, 96)
    t0_study = write_ct_study(tmp_path / "a", BASELINE_LESIONS, "20260105", shape_zyx=shape, with_rtstruct=False)
    t1_study = write_ct_study(
        tmp_path / "b", BASELINE_LESIONS, "20260316", shift_mm=SHIFT_MM, shape_zyx=shape, with_rtstruct=False
    )
    t0, t1 = load_ct_volume(t0_study.ct_files), load_ct_volume(t1_study.ct_files)
    fixed, moving = to_sitk(t0.hu, t0.geometry), to_sitk(t1.hu, t1.geometry)
    for mode in ("never", "always"):
        registration = register(fixed, moving, RegistrationSettings(deformable=mode))
        mapped = np.array(registration.t0_to_t1((-55.0, 0.0, 30.0)))
        assert np.allclose(mapped, np.add((-55.0, 0.0, 30.0), SHIFT_MM), atol=2.5), (mode, mapped)
        assert registration.correlation > 0.9
        assert ("B-spline" in registration.description) == (mode == "always")


def test_lesions_from_a_dicom_seg_on_the_ct(tmp_path: Path) -> None:
    """A reader's SEG on the CT (here written with highdicom from contoured lesions) gives the same lesions."""
    import pydicom

    from pipelines.ct.analysis import algorithm_identity
    from pipelines.ct.lesions import annotation_regions, assign_roles
    from pipelines.output.seg import build_segmentation

    study = write_ct_study(tmp_path, BASELINE_LESIONS, "20260105")
    ct = load_ct_volume(study.ct_files)
    settings = CtRadiomicsSettings()
    from_contours, _ = assign_roles(annotation_regions([study.rtstruct], ct, AnnotationSettings())[0], ct, settings)
    seg = build_segmentation(
        [pydicom.dcmread(p) for p in ct.paths], from_contours, algorithm_identity(settings), "reader", "reader SEG", 5
    )
    for description, lesion in zip(seg.SegmentSequence, from_contours):
        description.SegmentLabel = lesion.label  # as a reader's SEG would name them
    seg.save_as(tmp_path / "reader-seg.dcm")
    regions, _ = annotation_regions([tmp_path / "reader-seg.dcm"], ct, AnnotationSettings())
    from_seg, reason = assign_roles(regions, ct, settings)
    assert [lesion.label for lesion in from_seg] == [lesion.label for lesion in from_contours]
    for a, b in zip(from_seg, from_contours):
        assert a.offset == b.offset and np.array_equal(a.mask, b.mask) and a.role is b.role
    assert "primary from the label (Primary tumour)" in reason


def _lesion_at(uid: str, diameter: float, number: int) -> CtLesion:
    return CtLesion(
        number, uid, f"2.25.{number}", (0, 0, 0), np.ones((1, 1, 1), bool), LesionRole.METASTASIS, "annotation",
        uid, False, centroid_mm=(100.0 * number, 0.0, 0.0), long_axis_mm=diameter, short_axis_mm=diameter / 2,
    )  # fmt: skip


def test_a_lesion_is_progressive_by_growth_since_its_nadir() -> None:
    """Four 40 mm metastases (sum 160) shrink to 20 mm each at T1 (sum 80: PR). At T2 each has regrown to 26 mm:
    +6 mm and +30 % over its nadir of 20 (progressive), though still 35 % smaller than at the baseline (not
    progressive by growth since the baseline). The sum 104 is +30 % and +24 mm over the nadir 80: PD after a PR,
    acquired resistance, and with 0 new + 4 progressive lesions (> 3) the pattern is systemic (by growth since the
    baseline it would have been 0 progressive: oligo). Two regrowing lesions and one new one: 1 + 2 = 3, oligo."""
    import SimpleITK as sitk

    from pipelines.ct.tracking import Registration, match_lesions

    settings = CtRadiomicsSettings()
    identity = Registration(sitk.Euler3DTransform(), "identity", 1.0)
    baseline = [
        BaselineLesion(f"M{i}", f"M{i}", LesionRole.METASTASIS, False, (100.0 * i, 0, 0), 40.0, 20.0, 10.0)
        for i in range(1, 5)
    ]
    t1 = PriorAssessment("1.2.1", None, 1, 80.0, "PR", lesion_diameters_mm={f"M{i}": 20.0 for i in range(1, 5)})
    regrown = [_lesion_at(f"M{i}", 26.0, i) for i in range(1, 5)]
    _, changes = match_lesions(baseline, regrown, identity, settings, (t1,))
    assert [c.nadir_mm for c in changes] == [20.0] * 4 and all(c.progressive for c in changes)
    recist = assess(baseline, changes, settings, (t1,), weeks=24.0)
    assert (recist.sum_t1_mm, recist.nadir_mm, recist.category) == (104.0, 80.0, "PD")
    assert (recist.resistance, recist.progressive_lesions, recist.pattern) == (Resistance.ACQUIRED, 4, "systemic")
    # Without the earlier assessment's lesion diameters the baseline is the nadir: shrunk, not progressive.
    _, from_baseline = match_lesions(baseline, regrown, identity, settings)
    assert not any(c.progressive for c in from_baseline)

    two = [_lesion_at("M1", 26.0, 1), _lesion_at("M2", 26.0, 2), _lesion_at("M3", 20.0, 3), _lesion_at("M4", 20.0, 4)]
    new = replace(_lesion_at("N1", 12.0, 5), centroid_mm=(0.0, 300.0, 0.0))
    _, changes = match_lesions(baseline, [*two, new], identity, settings, (t1,))
    recist = assess(baseline, changes, settings, (t1,), weeks=24.0)
    assert (recist.category, recist.new_lesions, recist.progressive_lesions) == ("PD", 1, 2)
    assert (recist.resistance, recist.pattern) == (Resistance.ACQUIRED, "oligo")

    # A lesion gone at T1 (nadir 0) that is back at 6 mm has grown by 6 mm: progressive; at 4 mm it is not.
    gone = replace(t1, lesion_diameters_mm={"M2": 20.0, "M3": 20.0, "M4": 20.0})
    _, changes = match_lesions(baseline[:1], [_lesion_at("M1", 6.0, 1)], identity, settings, (gone,))
    assert changes[0].nadir_mm == 0.0 and changes[0].progressive
    _, changes = match_lesions(baseline[:1], [_lesion_at("M1", 4.0, 1)], identity, settings, (gone,))
    assert not changes[0].progressive
