"""Anatomical sites a radiologist would sign (issue 18, item 4) and the RECIST organ of a lesion (issue 21): a site
only where the CT shows the evidence. Real thigh crops (sts_002/sts_003, TCIA Soft-tissue-Sarcoma via IBSI/MIRP,
CC BY 3.0: never "thorax"), the synthetic head-and-neck PET/CT (tests/synthetic.py) and chest CT
(tests/synthetic_ct.py), and small CTs drawn here (a whole trunk with lungs, bony pelvis and legs; an abdomen with
bowel gas and no lungs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.ct.lesions import load_ct_volume
from pipelines.pet.analysis import analyse_pet_series
from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.anatomy import AnatomyMap, anatomy_for
from pipelines.petlesions.volume import load_pet_volume
from pipelines.types import VolumeGeometry
from tests.conftest import SHARED_DATA
from tests.synthetic import HEAD_NECK_LESIONS, HEAD_NECK_SHAPE, HEAD_NECK_SPACING, write_study
from tests.synthetic_ct import write_ct_study

SPACING = 4.0


def _grid(shape: tuple[int, int, int]) -> tuple[VolumeGeometry, np.ndarray, np.ndarray, np.ndarray]:
    origin = tuple(-(n - 1) * SPACING / 2 for n in shape[::-1])
    geometry = VolumeGeometry(origin, (SPACING,) * 3, (1, 0, 0), (0, 1, 0), (0, 0, 1), shape)  # type: ignore[arg-type]
    z, y, x = np.meshgrid(*[origin[2 - a] + np.arange(n) * SPACING for a, n in enumerate(shape)], indexing="ij")
    return geometry, x, y, z


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return sum(((p - c) / r) ** 2 for p, c, r in zip((x, y, z), centre, radii)) <= 1.0


def _whole_body() -> tuple[AnatomyMap, VolumeGeometry]:
    """Head to thighs, arms down: trunk, lungs, spine, bony pelvis (iliac bones, femoral heads) and two legs with
    femurs below it, arms beside the chest; a gas-filled bowel loop in the abdomen."""
    geometry, x, y, z = _grid((200, 80, 110))
    hu = np.full(x.shape, -1000.0)
    trunk = ((x / 150.0) ** 2 + (y / 100.0) ** 2 <= 1) & (z > -300) & (z < 250)
    head = _ellipsoid(x, y, z, (0, 0, 330), (70, 85, 90))
    neck = ((x / 55.0) ** 2 + (y / 55.0) ** 2 <= 1) & (z >= 240) & (z < 300)
    legs = [((x - side * 85) / 60.0) ** 2 + (y / 65.0) ** 2 <= 1 for side in (-1, 1)]
    thighs = (legs[0] | legs[1]) & (z <= -300)
    arms = [((x - side * 185) / 28.0) ** 2 + (y / 30.0) ** 2 <= 1 for side in (-1, 1)]
    arm = (arms[0] | arms[1]) & (z > -100) & (z < 230)
    hu[trunk | head | neck | thighs | arm] = 40.0
    for side in (-1, 1):
        hu[_ellipsoid(x, y, z, (side * 70, 0, 120), (55, 65, 110))] = -850.0  # lungs 10 to 230 mm
        iliac = (np.abs(x - side * 95) <= 30) & (np.abs(y - 20) <= 10) & (z > -300) & (z < -180)
        hu[iliac] = 500.0
        femur = ((x - side * 85) / 14.0) ** 2 + (y / 14.0) ** 2 <= 1
        hu[femur & (z <= -300)] = 700.0
    hu[((x / 15.0) ** 2 + ((y - 70) / 15.0) ** 2 <= 1) & (z > -300) & (z < 300)] = 700.0  # spine
    hu[_ellipsoid(x, y, z, (-40, -30, -80), (30, 30, 30))] = -1000.0  # bowel gas (about 110 ml)
    return AnatomyMap(hu.astype(np.float32), geometry), geometry


@pytest.fixture(scope="module")
def whole_body() -> AnatomyMap:
    return _whole_body()[0]


@pytest.mark.parametrize(
    "point, site",
    [
        ((-70.0, 0.0, 120.0), "lung"),
        ((0.0, -60.0, 120.0), "thorax"),  # anterior mediastinum
        ((0.0, 0.0, 330.0), "head and neck"),
        ((0.0, -20.0, 270.0), "head and neck"),
        ((60.0, 0.0, -60.0), "abdomen"),
        ((0.0, -30.0, -240.0), "pelvis"),
        ((85.0, 30.0, -340.0), "lower limb"),
        ((185.0, 0.0, 100.0), "upper limb"),
        ((0.0, 140.0, 0.0), ""),  # outside the body
    ],
)
def test_sites_follow_what_the_ct_shows(whole_body: AnatomyMap, point, site: str) -> None:
    found = whole_body.site(point)
    assert found.name == site, found
    assert found.evidence


def test_bowel_gas_is_no_lung_and_without_lungs_no_site_is_guessed() -> None:
    """An abdomen CT with gas-filled bowel (and any two enclosed air pockets): no lungs, so no thorax, and no site."""
    geometry, x, y, z = _grid((40, 80, 96))
    hu = np.where((x / 150.0) ** 2 + (y / 100.0) ** 2 <= 1, 40.0, -1000.0)
    hu[_ellipsoid(x, y, z, (-50, -20, 0), (40, 35, 40))] = -1000.0  # about 230 ml of gas each
    hu[_ellipsoid(x, y, z, (50, -20, 0), (40, 35, 40))] = -990.0
    anatomy = AnatomyMap(hu.astype(np.float32), geometry)
    assert not anatomy.lungs.any() and "median -1000 HU" in anatomy.lung_note
    site = anatomy.site((0.0, 40.0, 0.0))
    assert site.name == "" and "no lungs to orient by" in site.evidence


@pytest.mark.parametrize("case", ["sts_002", "sts_003"])
def test_thigh_crops_are_never_thorax(case: str) -> None:
    """The real crops 5 cm around thigh sarcomas: air below the table and a gas pocket were once taken for lungs
    ("Thorax"). The crop cuts the body and shows no lung: no site, with the reason; every lesion, reader-drawn or
    detected, gets none."""
    folder = SHARED_DATA / case
    pet = sorted((folder / "PET").glob("0*.dcm"))
    ct = sorted((folder / "CT").glob("0*.dcm"))
    anatomy = anatomy_for(load_pet_volume(pet), ct)
    assert anatomy is not None and not anatomy.lungs.any()
    params = PetQuantSettings()
    annotations = [folder / "PET" / "RTSTRUCT_RS.dcm", folder / "CT" / "RTSTRUCT_RS.dcm"]
    reader = analyse_pet_series(pet, params, annotations, ct_paths=ct)
    for result in (reader, analyse_pet_series(pet, params, ct_paths=ct)):
        assert result.lesions
        for lesion in result.lesions:
            assert lesion.location in ("", "lower limb"), lesion.location_evidence
            assert lesion.location_evidence and lesion.organ in ("", "soft tissue", "bone")


def test_chest_ct_lung_thorax_abdomen_and_bone(tmp_path: Path) -> None:
    """The synthetic chest CT (lungs cut by the top of its field, liver, spine) on its own grid."""
    written = write_ct_study(tmp_path, (), "20260101", with_rtstruct=False)
    ct = load_ct_volume(written.ct_files)
    anatomy = AnatomyMap(ct.hu, ct.geometry)
    assert anatomy.site((-60.0, 0.0, 30.0)).name == "lung"
    assert anatomy.site((0.0, -40.0, 20.0)).name == "thorax"
    assert anatomy.site((40.0, 10.0, -45.0)).name == "abdomen"
    # Above the lungs, but their apices lie beyond the field: a neck is not claimed.
    above = anatomy.site((0.0, -40.0, 68.0))
    assert above.name in ("", "thorax") and above.name != "head and neck"
    from pipelines.petlesions.types import Lesion, LesionMeasurements

    spine = np.zeros((3, 3, 3), dtype=bool)
    spine[1, 1, 1] = True
    centre = np.round(
        np.linalg.solve(np.diag(ct.geometry.spacing_mm), np.subtract((0.0, 70.0, 0.0), ct.geometry.origin_mm))
    ).astype(int)[::-1]
    measurements = LesionMeasurements(1, 1, 1, 1, 1, 1, 1, 1, 1, (0.0, 70.0, 0.0), 5, 5, False)
    lesion = Lesion(1, "Lesion 1", "1.2.3", tuple(int(c) - 1 for c in centre), spine, measurements)  # type: ignore
    assert anatomy.organ(lesion).name == "bone"


def test_head_and_neck_phantom_lesions_are_head_and_neck(tmp_path: Path) -> None:
    study = write_study(
        tmp_path,
        shape_zyx=HEAD_NECK_SHAPE,
        spacing_xyz=HEAD_NECK_SPACING,
        lesions=HEAD_NECK_LESIONS,
        head_and_neck=True,
    )
    result = analyse_pet_series(study.pet_files, PetQuantSettings(), ct_paths=study.ct_files)
    assert len(result.lesions) >= 6
    assert {lesion.location for lesion in result.lesions} == {"head and neck"}
