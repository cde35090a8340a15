"""The PET lesion method's parameters are configured once, in `pipelines.pet_quant`; the CT pipeline's PET fallback
finds them there by their type (`lesion_method_settings`), not by the PET pipeline's name."""

from __future__ import annotations

import pytest

from common.settings import Strict
from pipelines.errors import ConfigurationProblem
from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.settings import PetLesionSettings, lesion_method_settings


def test_the_ct_fallback_uses_the_pet_quant_block_as_configured(make_settings) -> None:
    settings = make_settings(pipelines={"pet_quant": {"detection_suv_threshold": 3.1, "max_lesions": 7}})
    found = lesion_method_settings(settings.pipelines)
    assert found is settings.pipelines.pet_quant
    assert (found.detection_suv_threshold, found.max_lesions) == (3.1, 7)


def test_without_such_a_block_the_method_s_defaults() -> None:
    class NoPet(Strict):
        other: int = 1

    assert lesion_method_settings(NoPet()) == PetLesionSettings()


def test_two_blocks_holding_the_method_are_refused() -> None:
    class Two(Strict):
        pet_quant: PetQuantSettings = PetQuantSettings()
        another: PetLesionSettings = PetLesionSettings()

    with pytest.raises(ConfigurationProblem, match="pipelines.another, pipelines.pet_quant"):
        lesion_method_settings(Two())
