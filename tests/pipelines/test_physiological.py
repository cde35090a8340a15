"""Automatic detection on a whole-body phantom with physiological uptake: every lesion and no organ."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from immunode.config import PetQuantSettings
from pipelines.lesions import segment_lesions
from pipelines.pet_volume import load_pet_volume
from tests.synthetic import PHYSIOLOGICAL_LESIONS, write_study

ORGANS = {
    "brain": (0, 0, 185),
    "myocardium": (30, -10, 95),
    "left kidney": (75, 55, -60),
    "right kidney": (-75, 55, -60),
    "bladder": (0, -10, -200),
}


def test_lesions_found_and_physiological_uptake_left_out(tmp_path: Path) -> None:
    study = write_study(
        tmp_path, with_ct=False, shape_zyx=(120, 96, 96), lesions=PHYSIOLOGICAL_LESIONS, physiological=True
    )
    volume = load_pet_volume(list(study.pet_files))
    found = segment_lesions(volume, PetQuantSettings())
    centroids = np.array([lesion.measurements.centroid_mm for lesion in found])
    for truth in PHYSIOLOGICAL_LESIONS:
        assert np.min(np.linalg.norm(centroids - truth.centre_mm, axis=1)) < 3.0, truth
    assert len(found) == len(PHYSIOLOGICAL_LESIONS), [tuple(np.round(c)) for c in centroids]
    # With the exclusions switched off the organs are reported: the rules are what keeps them out.
    params = PetQuantSettings.model_validate({"physiological": {"enabled": False}})
    everything = np.array([lesion.measurements.centroid_mm for lesion in segment_lesions(volume, params)])
    for organ, centre in ORGANS.items():
        assert np.min(np.linalg.norm(everything - centre, axis=1)) < 30.0, organ
