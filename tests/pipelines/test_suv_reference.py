"""The 17 cases of the oncoray SUV reference suite (../shared/data/suv_dro): SUV min/median/max in the mask."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.imaging.geometry import to_sitk
from pipelines.petlesions.volume import load_pet_volume
from tests.conftest import SUV_DRO

CASES = list(csv.DictReader((SUV_DRO / "DRO_list.csv").open())) if (SUV_DRO / "DRO_list.csv").exists() else []
# DRO_2_3 stores SUVbsa as int16 with RescaleSlope 0.01, i.e. its minimum (0.05) and median (0.26) carry a
# quantisation step of 20 % and 4 %: no body-surface-area formula can meet 0.5 % there. Its maximum (1.05,
# step 1 %) is held to that step; everything else in the suite to the 0.5 % the suite asks for.
QUANTISATION_LIMITED = {"DRO_2_3": {"min": 0.06, "median": 0.02, "max": 0.01}}


def test_suite_is_present() -> None:
    assert len(CASES) == 17, f"expected the 17 reference cases in {SUV_DRO}"


@pytest.mark.parametrize("case", CASES, ids=[c["ID"] for c in CASES])
def test_suv_matches_reference(case: dict) -> None:
    folder = SUV_DRO / case["ID"]
    volume = load_pet_volume(sorted((folder / "PT").glob("*.dcm")))
    image = to_sitk(volume.suv, volume.geometry)
    mask_image = sitk.ReadImage(str(next((folder / "mask").glob("*.nii*"))))
    resampled = sitk.Resample(mask_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    mask = sitk.GetArrayFromImage(resampled) > 0
    assert mask.sum() > 1000
    values = volume.suv[mask]
    measured = {"min": values.min(), "median": np.median(values), "max": values.max()}
    expected = {
        "min": float(case["SUVmin_expected"]),
        "median": float(case["SUVmed_expected"]),
        "max": float(case["SUVmax_expected"]),
    }
    tolerance = QUANTISATION_LIMITED.get(case["ID"], {"min": 0.005, "median": 0.005, "max": 0.005})
    for key in expected:
        assert measured[key] == pytest.approx(expected[key], rel=tolerance[key]), (case["Description"], key)
