"""Lesions a reader would accept. The benchmark (benchmarks/lesion_accuracy.py) against the expert contours of
sts_002 and sts_003 (TCIA Soft-tissue-Sarcoma, IBSI/MIRP; CC BY 3.0) and synthetic head-and-neck and
whole-body phantoms (tests/synthetic.py) whose lesions touch the brain, a tonsil, the salivary glands, the
vocal cords, the bladder and the heart; the rules around what is reported: the cap is stated, nothing below
the minimum volume, the RECIST size rule only where PET voxels support it, every exclusion explained, a CT
that does not cover the pelvis neither hides the bladder nor guesses locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lesion_accuracy import phantom_case, real_case
from pipelines.pet.analysis import analyse_pet_series
from pipelines.pet.settings import PetQuantSettings
from tests.synthetic import DEFAULT_LESIONS, WHOLE_BODY_NEIGHBOUR_LESIONS, SyntheticLesion, write_study

PARAMS = PetQuantSettings()


@pytest.mark.parametrize(
    "case, found, max_false_positives, min_dice",
    [
        # The expert contoured the tumour only; the other foci in the crops are moderate thigh and pelvic uptake.
        ("sts_002", 1, 8, 0.5),
        ("sts_003", 1, 2, 0.8),
    ],
)
def test_real_expert_contours(case: str, found: int, max_false_positives: int, min_dice: float) -> None:
    score = real_case(case, PARAMS)
    assert score.found == found
    assert score.false_positives <= max_false_positives
    assert min(score.dice) >= min_dice


@pytest.mark.parametrize(
    "case, with_ct",
    [
        ("head-and-neck phantom, PET/CT", True),
        ("head-and-neck phantom, PET only", False),
        ("whole-body phantom, PET/CT", True),
    ],
)
def test_phantoms_with_lesions_touching_physiological_uptake(tmp_path: Path, case: str, with_ct: bool) -> None:
    """The head-and-neck phantom joins everything above SUV 2.5 from the neck to the brain in one connected
    region, as the real study did (where the node once found 0 of 11 expert lesions and 50 false positives):
    the target is the issue's, at least 80 % found, at most 3 false positives, Dice at least 0.7."""
    score = phantom_case(case, tmp_path, PARAMS, with_ct)
    assert score.sensitivity >= 0.8, score
    assert score.false_positives <= 3, score
    assert score.mean_dice >= 0.7, score
    assert any("brain" in note for note in score.excluded)


def test_the_cap_is_stated_and_no_lesion_is_below_the_minimum(tmp_path: Path) -> None:
    study = write_study(tmp_path, shape_zyx=(110, 96, 96), lesions=WHOLE_BODY_NEIGHBOUR_LESIONS, physiological=True)
    capped = PARAMS.model_copy(update={"max_lesions": 3})
    result = analyse_pet_series(study.pet_files, capped, ct_paths=study.ct_files)
    assert len(result.lesions) == 3
    assert any("only the 3 with the highest candidate score are reported" in note for note in result.detection_notes)
    assert all(lesion.candidate_score is not None for lesion in result.lesions)
    big = PARAMS.model_copy(update={"min_lesion_volume_ml": 2.5})
    result = analyse_pet_series(study.pet_files, big, ct_paths=study.ct_files)
    assert result.lesions and all(lesion.measurements.metabolic_volume_ml >= 2.5 for lesion in result.lesions)
    assert any("below 2.5 ml" in note for note in result.detection_notes)
    explained = " ".join(result.detection_notes)
    for organ in ("brain", "myocardium", "kidney", "urinary bladder"):
        assert organ in explained


def test_recist_size_rule_is_not_claimed_where_pet_voxels_cannot_support_it(tmp_path: Path) -> None:
    """A 14 mm lesion on 4 mm voxels may meet the rule; on 8 mm voxels it is less than two voxels across."""
    lesion = (SyntheticLesion((0.0, 0.0, 0.0), 7.0, 9.0),)
    fine = write_study(tmp_path / "fine", with_ct=False, shape_zyx=(30, 64, 64), lesions=lesion)
    coarse = write_study(
        tmp_path / "coarse", with_ct=False, shape_zyx=(16, 32, 32), spacing_xyz=(8.0, 8.0, 8.0), lesions=lesion
    )
    (on_fine,) = analyse_pet_series(fine.pet_files, PARAMS).lesions
    (on_coarse,) = analyse_pet_series(coarse.pet_files, PARAMS).lesions
    assert on_fine.measurements.recist_target
    assert on_coarse.measurements.long_axis_mm >= 10.0 and not on_coarse.measurements.recist_target


def test_a_ct_that_does_not_cover_the_pelvis_neither_hides_the_bladder_nor_guesses_locations(tmp_path: Path) -> None:
    study = write_study(tmp_path, shape_zyx=(110, 96, 96), lesions=WHOLE_BODY_NEIGHBOUR_LESIONS, physiological=True)
    upper_ct = list(study.ct_files[55:])  # the upper half only: thorax and head
    result = analyse_pet_series(study.pet_files, PARAMS, ct_paths=upper_ct)
    assert any("urinary bladder" in note for note in result.detection_notes)
    pelvic = [lesion for lesion in result.lesions if lesion.measurements.centroid_mm[2] < -100]
    assert pelvic and all(lesion.location == "" for lesion in pelvic)
    thoracic = [lesion for lesion in result.lesions if 0 < lesion.measurements.centroid_mm[2] < 120]
    assert thoracic and all(lesion.location for lesion in thoracic)


def test_the_default_phantom_still_gives_its_four_lesions(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    result = analyse_pet_series(study.pet_files, PARAMS, ct_paths=study.ct_files)
    assert len(result.lesions) == len(DEFAULT_LESIONS)
