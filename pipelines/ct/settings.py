"""Configuration block `pipelines.ct_radiomics`: the longitudinal CT method, its pairing and registration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from common.settings import Strict, valid_regex
from pipelines.pairing import PairingSettings


class RegistrationSettings(Strict):
    """Follow-up (T1) CT registered to baseline (T0): rigid, then B-spline where rigid leaves a poor fit."""

    deformable: Literal["auto", "always", "never"] = "auto"
    # auto: deformable when the correlation of the rigidly aligned CTs (within the body) stays below this.
    deformable_below_correlation: float = Field(0.9, gt=0, le=1)
    # A follow-up lesion matches the baseline lesion whose mapped centroid is nearest, within this distance.
    match_distance_mm: float = Field(20.0, gt=0)


class CtRadiomicsSettings(Strict):
    """CT radiomics, delta-radiomics and resistance pattern of the longitudinal CT method."""

    # An annotation label (RTSTRUCT ROI name, SEG segment label) matching this marks the primary tumour;
    # every other lesion is a metastasis.
    primary_label: str = "(?i)(primary|^GTV)"
    # When no label names a primary: "largest" (the largest lesion by volume) or "none" (all metastases).
    primary_rule: Literal["largest", "none"] = "largest"
    pet_fallback: bool = True  # without CT annotations: PET lesions of the same study on the CT grid
    max_lesions: int = Field(20, ge=1)
    extraction_processes: int = Field(2, ge=1, le=64)  # worker processes for the volumes of one study
    per_lesion_features: bool = True  # also extract each lesion on its own (besides P and M)
    # A matched lesion is progressive when its RECIST diameter grew by at least this much ...
    progression_percent: float = Field(20.0, ge=0)
    progression_min_mm: float = Field(5.0, ge=0)  # ... and by at least this many millimetres
    oligo_max_lesions: int = Field(3, ge=1)  # new + progressive lesions up to this many: oligo-progression
    # The method's first assessment (T1) falls 9-12 weeks after the baseline; outside it the SR says so.
    t1_window_weeks: tuple[float, float] = (9.0, 12.0)
    # Acquired resistance: progression after a response (CR/PR), or after stable disease lasting this long.
    stable_disease_min_weeks: float = Field(26.0, ge=0)
    # The published delta-radiomics signature (CSV as ../shared/data/delta_radiomics_published.csv):
    # its features are reported in the follow-up SR with the nearer published group median.
    published_signature: Path | None = None
    # A classifier from `immunode train ar-signature` (.json with its .card.json); None: no class in the SR.
    ar_signature: Path | None = None
    pairing: PairingSettings = PairingSettings()
    registration: RegistrationSettings = RegistrationSettings()

    @field_validator("primary_label")
    @classmethod
    def _regex(cls, value: str) -> str:
        return valid_regex(value)
