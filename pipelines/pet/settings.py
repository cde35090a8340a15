"""Configuration block `pipelines.pet_quant`: the PET lesion method's parameters (`pipelines.petlesions.settings`,
physiological uptake included) and CytAct."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from common.settings import Strict
from pipelines.petlesions.settings import PetLesionSettings

# The method's pre-treatment PET: within 3 months before the therapy start (91 days); a site may narrow it.
METHOD_PRETREATMENT_WINDOW_DAYS = 91


class CytActSettings(Strict):
    """Lesion CytAct prediction and the patient-level biomarkers of the PET immune-profiling method."""

    enabled: bool = True
    # None: the shipped synthetic demonstration weights (models/weights/cytact-synthetic-v1.pt).
    weights: Path | None = None
    # The patient summary (minimum, mean, maximum, variance) is over the RECIST 1.1 target lesions, as in the
    # method ("targets"); "all" uses every lesion (not the method). CytAct is predicted for every lesion either way.
    summary_lesions: Literal["targets", "all"] = "targets"
    max_targets: int = Field(5, ge=1)  # RECIST 1.1: at most five target lesions ...
    # ... and two per organ; the organ comes from the reader's finding site or name, else the CT (lung, bone), all
    # lymph nodes being one organ (pipelines/imaging/organs.py); lesions of unknown organ count as one organ.
    max_targets_per_organ: int = Field(2, ge=1)
    # Low group: minimum CytAct below this cut-off (research/published_figures.csv, park2020 cutoff_min). The
    # cut-offs belong to the model they were derived for: groups are reported only for weights with the sha256
    # `cutoffs_weights_sha256`. None (default): no weights here are the published model's, so the SR gives no group.
    low_group_cutoff: float = -0.107
    # Heterogeneity: the paper gives no cut-off (it splits a cohort at the median variance, as `analyse-outcomes`
    # does). A site may set its own for single patients; the SR then labels it the site's cut-off. None: no
    # heterogeneity group in the SR.
    heterogeneity_variance_cutoff: float | None = Field(None, ge=0)
    cutoffs_weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # The pre-treatment PET of the outcome statistics (`analyse-outcomes`, `reproduce cytact`): the latest analysis
    # within this many days before the therapy start (the method: 3 months).
    pretreatment_window_days: int = Field(METHOD_PRETREATMENT_WINDOW_DAYS, ge=1)


class PetQuantSettings(PetLesionSettings):
    """The `pet_quant` pipeline: the PET lesion method's parameters and lesion CytAct."""

    cytact: CytActSettings = CytActSettings()
