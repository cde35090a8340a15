"""Every study in ../shared/data, as the node would analyse it: no tumour reported twice and no site a radiologist
would reject (issue 18, "done means"). sts_002/sts_003: real cropped thigh PET/CT with an expert's PET and CT
contours (TCIA Soft-tissue-Sarcoma via IBSI/MIRP, CC BY 3.0); suv_dro: the 17 SUV reference PET series with their
RTSTRUCT (oncoray, CC BY 4.0; PET only, so no site is given); qin_hn_expert_objects: a real reader's SEG (dcmqi
examples, BSD; its PET images are not included) whose anatomic region names the organ."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipelines.imaging.contours import annotated_regions, overlap_fraction
from pipelines.imaging.organs import organ_from_text
from pipelines.imaging.settings import AnnotationSettings
from pipelines.pet.analysis import analyse_pet_series
from pipelines.pet.settings import PetQuantSettings
from pipelines.pet.types import PetQuantResult
from tests.conftest import SHARED_DATA, SUV_DRO

PARAMS = PetQuantSettings()
SETTINGS = AnnotationSettings()


def _masks(result: PetQuantResult) -> list[np.ndarray]:
    masks = []
    for lesion in result.lesions:
        mask = np.zeros(result.volume.suv.shape, dtype=bool)
        mask[lesion.box()] = lesion.mask
        masks.append(mask)
    return masks


def _no_tumour_twice(result: PetQuantResult, tumours: list[np.ndarray]) -> None:
    """No two lesions lie each mostly (at the merge threshold) inside one annotated tumour."""
    for tumour in tumours:
        inside = [m for m in _masks(result) if (m & tumour).sum() >= SETTINGS.merge_overlap * m.sum()]
        assert len(inside) <= 1, [lesion.tracking_identifier for lesion in result.lesions]


@pytest.mark.parametrize("case", ["sts_002", "sts_003"])
def test_real_thigh_studies_one_lesion_per_tumour_and_no_wrong_site(case: str) -> None:
    folder = SHARED_DATA / case
    pet = sorted((folder / "PET").glob("0*.dcm"))
    ct = sorted((folder / "CT").glob("0*.dcm"))
    contours = [folder / "PET" / "RTSTRUCT_RS.dcm", folder / "CT" / "RTSTRUCT_RS.dcm"]
    reader = analyse_pet_series(pet, PARAMS, contours, ct_paths=ct)
    automatic = analyse_pet_series(pet, PARAMS, ct_paths=ct)
    volume = reader.volume
    tumours = [
        region.mask
        for region in annotated_regions(contours, volume.geometry, volume.frame_of_reference_uid, SETTINGS).regions
    ]
    assert len(tumours) == 1 and len(reader.lesions) == 1
    for result in (reader, automatic):
        _no_tumour_twice(result, tumours)
        for lesion in result.lesions:  # a thigh: never the thorax, the lung, the abdomen or the head and neck
            assert lesion.location in ("", "lower limb"), lesion.location_evidence


@pytest.mark.parametrize("case", sorted(p.name for p in SUV_DRO.glob("DRO_*") if p.is_dir()))
def test_suv_reference_series_one_lesion_per_roi_and_no_site_without_ct(case: str) -> None:
    folder = SUV_DRO / case
    pet = sorted((folder / "PT").glob("*.dcm"))
    rtstruct = sorted((folder / "RS").glob("*.dcm"))
    result = analyse_pet_series(pet, PARAMS, rtstruct)
    rois = sum(len(pydicom.dcmread(path).StructureSetROISequence) for path in rtstruct)
    assert len(result.lesions) <= rois
    masks = _masks(result)
    for i, first in enumerate(masks):
        for second in masks[i + 1 :]:
            assert overlap_fraction(first, second) < SETTINGS.merge_overlap
    assert all(lesion.location == "" and "no CT" in lesion.location_evidence for lesion in result.lesions)


def test_a_real_readers_seg_names_the_organ_by_its_anatomic_region() -> None:
    seg = pydicom.dcmread(SHARED_DATA / "qin_hn_expert_objects" / "seg.dcm", stop_before_pixels=True)
    (segment,) = seg.SegmentSequence
    region = str(segment.AnatomicRegionSequence[0].CodeMeaning)
    assert region == "pharyngeal tonsil (adenoid)"
    assert organ_from_text(region) == "head and neck mucosa or gland"
    assert organ_from_text(str(segment.SegmentLabel)) == ""  # "Neoplasm, Primary" names no organ

