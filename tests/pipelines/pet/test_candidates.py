"""The per-candidate score of automatic detection (issue 18, item 2): focal, intense uptake scores high; the CT's
evidence of normal uptake (outside the body, bowel gas, faint uptake in bone) lowers it and says why; the score
ranks the candidates and can hold back the faintest; reader-defined lesions are no candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.pet.analysis import analyse_pet_series
from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.candidates import candidate_score
from pipelines.petlesions.types import Lesion, LesionMeasurements
from pipelines.types import VolumeGeometry
from tests.synthetic import DEFAULT_LESIONS, write_rtstruct, write_study

GEOMETRY = VolumeGeometry((0.0, 0.0, 0.0), (4.0, 4.0, 4.0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (20, 20, 20))


def _lesion(suv_max: float, background: float) -> Lesion:
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[1, 1, 1] = mask[1, 1, 0] = mask[1, 0, 1] = mask[0, 1, 1] = True
    measurements = LesionMeasurements(
        suv_max, suv_max / 2, suv_max / 2, 1, 1, int(mask.sum()), 1, 1, background, (24.0, 24.0, 24.0), 8, 8, False
    )
    return Lesion(1, "Lesion 1", "1.2.3", (5, 5, 5), mask, measurements)


def _ct(value: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    hu = np.full(GEOMETRY.shape, value, dtype=np.float32)
    return hu, np.ones(GEOMETRY.shape, dtype=bool)


def test_focal_intense_uptake_in_soft_tissue_scores_high() -> None:
    hu, body = _ct()
    result = candidate_score(_lesion(9.0, 1.0), GEOMETRY, hu, body, np.zeros_like(body), np.zeros_like(body))
    assert result.score == pytest.approx(1.0) and result.evidence == ()
    faint = candidate_score(_lesion(3.0, 1.2), GEOMETRY, hu, body, np.zeros_like(body), np.zeros_like(body))
    assert 0.05 < faint.score < 0.5  # contrast 2.5, SUVmax 3: a candidate, far down the list


def test_ct_evidence_of_normal_uptake_lowers_the_score_and_says_why() -> None:
    lesion = _lesion(4.0, 1.3)  # contrast 3.1: a faint focus
    hu, body = _ct()
    nothing = np.zeros_like(body)
    plain = candidate_score(lesion, GEOMETRY, hu, body, nothing, nothing).score
    gas = hu.copy()
    gas[6, 4:9, 4:9] = -1000.0  # gas beside it: bowel
    bowel = candidate_score(lesion, GEOMETRY, gas, body, nothing, nothing)
    assert bowel.score == pytest.approx(0.3 * plain) and "bowel" in bowel.evidence[0]
    bone_hu, _ = _ct(250.0)
    marrow = candidate_score(lesion, GEOMETRY, bone_hu, body, np.ones_like(body), nothing)
    assert marrow.score == pytest.approx(0.4 * plain) and "marrow" in marrow.evidence[0]
    outside = candidate_score(lesion, GEOMETRY, hu, nothing, nothing, nothing)
    assert outside.score == pytest.approx(0.1 * plain) and "outside the body" in outside.evidence[0]
    # Gas in a lung is no bowel; without a CT only the uptake counts.
    lung = candidate_score(lesion, GEOMETRY, gas, body, nothing, np.ones_like(body))
    assert lung.score == pytest.approx(plain)
    assert candidate_score(lesion, GEOMETRY).score == pytest.approx(plain)


def test_every_candidate_has_a_score_and_the_faintest_can_be_held_back(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    result = analyse_pet_series(study.pet_files, PetQuantSettings(), ct_paths=study.ct_files)
    scores = [lesion.candidate_score for lesion in result.lesions]
    assert len(scores) == len(DEFAULT_LESIONS) and all(0.0 < s <= 1.0 for s in scores)
    assert any(note.startswith("Candidate scores") for note in result.detection_notes)
    faintest = min(scores)
    strict = PetQuantSettings(min_candidate_score=faintest + 1e-3)
    held = analyse_pet_series(study.pet_files, strict, ct_paths=study.ct_files)
    assert len(held.lesions) == len(DEFAULT_LESIONS) - 1
    assert any("candidate score below" in note for note in held.detection_notes)
    # A reader's lesions are no candidates: no score.
    rtstruct = write_rtstruct(tmp_path / "rs.dcm", study, DEFAULT_LESIONS[:1])
    (lesion,) = analyse_pet_series(study.pet_files, strict, [rtstruct], ct_paths=study.ct_files).lesions
    assert lesion.candidate_score is None and lesion.sources
