"""Automatic detection on a whole-body phantom with physiological uptake: every lesion and no organ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.anatomy import load_ct_on_pet_grid
from pipelines.petlesions.lesions import segment_lesions
from pipelines.petlesions.volume import load_pet_volume
from tests.synthetic import PHYSIOLOGICAL_LESIONS, SyntheticLesion, write_study

ORGANS = {
    "brain": (0, 0, 197),
    "myocardium": (30, -10, 95),
    "left kidney": (75, 55, -60),
    "right kidney": (-75, 55, -60),
    "bladder": (0, -10, -200),
}


@pytest.mark.parametrize("with_ct", [False, True], ids=["pet-only", "ct-confirmed"])
def test_lesions_found_and_physiological_uptake_left_out(tmp_path: Path, with_ct: bool) -> None:
    study = write_study(
        tmp_path, with_ct=with_ct, shape_zyx=(120, 96, 96), lesions=PHYSIOLOGICAL_LESIONS, physiological=True
    )
    volume = load_pet_volume(list(study.pet_files))
    ct_hu = load_ct_on_pet_grid(list(study.ct_files), volume.geometry) if with_ct else None
    found = segment_lesions(volume, PetQuantSettings(), ct_hu=ct_hu)
    centroids = np.array([lesion.measurements.centroid_mm for lesion in found])
    for truth in PHYSIOLOGICAL_LESIONS:
        assert np.min(np.linalg.norm(centroids - truth.centre_mm, axis=1)) < 3.0, truth
    assert len(found) == len(PHYSIOLOGICAL_LESIONS), [tuple(np.round(c)) for c in centroids]
    # With the exclusions switched off the organs are reported: the rules are what keeps them out.
    params = PetQuantSettings.model_validate({"physiological": {"enabled": False}})
    everything = np.array([lesion.measurements.centroid_mm for lesion in segment_lesions(volume, params, ct_hu=ct_hu)])
    for organ, centre in ORGANS.items():
        assert np.min(np.linalg.norm(everything - centre, axis=1)) < 30.0, organ


def test_with_ct_a_hot_pelvic_mass_that_is_not_fluid_is_kept(tmp_path: Path) -> None:
    """PET alone takes the most inferior midline region for the bladder; the CT shows soft tissue."""
    mass = (SyntheticLesion((0.0, -10.0, -200.0), 30.0, 12.0),)
    study = write_study(tmp_path, shape_zyx=(120, 96, 96), lesions=mass)
    volume = load_pet_volume(list(study.pet_files))
    assert segment_lesions(volume, PetQuantSettings()) == ()  # PET-only rule: taken for the bladder
    ct_hu = load_ct_on_pet_grid(list(study.ct_files), volume.geometry)
    (kept,) = segment_lesions(volume, PetQuantSettings(), ct_hu=ct_hu)
    assert np.linalg.norm(np.subtract(kept.measurements.centroid_mm, mass[0].centre_mm)) < 3.0
