"""Configuration block `pipelines.pet_quant`: the PET lesion method's parameters, physiological uptake, CytAct."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from common.settings import Strict

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


class PhysiologicalSettings(Strict):
    """Physiological uptake excluded from automatic detection (see pipelines/physiological.py for the rules)."""

    enabled: bool = True
    brain: bool = True
    myocardium: bool = True
    kidneys: bool = True
    bladder: bool = True
    ureters: bool = True
    head_and_neck_pairs: bool = True  # mirrored foci below the brain: tonsils, salivary glands, vocal cords
    brown_fat: bool = True  # with CT: foci in fat
    bowel: bool = True  # with CT: foci with gas around them below the lungs
    diffuse_organs: bool = True  # large foci without a focal peak (liver, spleen, marrow)
    brain_min_ml: float = Field(250.0, gt=0)
    brain_from_top_mm: float = Field(200.0, gt=0)
    myocardium_hollowness: float = Field(0.2, gt=0)
    body_suv: float = Field(0.3, gt=0)  # SUV above which a voxel counts as inside the body (midline)
    pair_max_ratio: float = Field(1.6, ge=1)  # mirrored head-and-neck foci within this SUVmax ratio are normal,
    pair_max_suv: float = Field(7.0, gt=0)  # ... unless hotter than this (nodes)
    pair_weaker_fraction: float = Field(0.6, gt=0, le=1)  # ... and the weak side of a lopsided pair below this
    head_and_neck_depth_mm: float = Field(250.0, gt=0)  # without a CT: the zone reaches this far below the brain
    # A focus of at most 2 ml and this SUVmax within 10 mm of an organ left out is a piece of that organ.
    faint_suv: float = Field(3.5, gt=0)


class PetQuantSettings(Strict):
    """Parameters of the PET lesion quantification (adaptive threshold after the PET immune-profiling method)."""

    detection_suv_threshold: float = Field(2.5, gt=0)
    # Connected uptake is split into foci where it dips below this fraction of the lower of two peaks.
    split_saddle_fraction: float = Field(0.6, gt=0, le=1)
    # Low-grade uptake (below this times detection_suv_threshold) around a small hot core is that lesion's
    # background (a node on avid muscle), not part of the lesion.
    plateau_suv_factor: float = Field(1.5, gt=1)
    # Automatic detection: a candidate whose SUVmax is below this times its background is not focal uptake.
    min_lesion_contrast: float = Field(2.0, ge=1)
    # No lesion smaller than this is reported (after the adaptive threshold), whatever found it.
    min_lesion_volume_ml: float = Field(0.5, ge=0)
    # Automatic detection: candidates scored below this are not offered (pipelines/pet/candidates.py; 0: all are).
    min_candidate_score: float = Field(0.0, ge=0, le=1)
    max_lesions: int = Field(50, ge=1)
    beta: float = Field(0.3, gt=0, le=1)
    i70_fraction: float = Field(0.7, gt=0, lt=1)
    # Background = mean SUV of a shell between these distances from the detected region, excluding
    # voxels of any detected region (the method leaves the region open; this is our documented choice).
    background_inner_mm: float = Field(10.0, ge=0)
    background_outer_mm: float = Field(20.0, gt=0)
    peak_sphere_ml: float = Field(1.0, gt=0)
    # Semi-automatic mode: how far from a reader's seed (a point) the lesion maximum is looked for ...
    seed_search_mm: float = Field(10.0, gt=0)
    # ... and by how much a reader's region (RTSTRUCT ROI, SEG segment) is widened for the threshold (a contour
    # drawn on the CT, or on a grid of its own, may cut the edge of the PET uptake).
    reader_margin_mm: float = Field(5.0, ge=0)
    physiological: PhysiologicalSettings = PhysiologicalSettings()
    cytact: CytActSettings = CytActSettings()

    @model_validator(mode="after")
    def _shell_is_a_shell(self) -> PetQuantSettings:
        if self.background_outer_mm <= self.background_inner_mm:
            raise ValueError("background_outer_mm must be greater than background_inner_mm")
        return self
