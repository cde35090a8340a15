"""The PET lesion method's parameters (`PetLesionSettings`), configured in the block `pipelines.pet_quant`, and how
a pipeline that uses the method without running it on its own finds them (`lesion_method_settings`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from common.settings import Strict
from pipelines.errors import ConfigurationProblem


class PhysiologicalSettings(Strict):
    """Physiological uptake excluded from automatic detection (the rules: pipelines/petlesions/physiological.py)."""

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


class PetLesionSettings(Strict):
    """Parameters of the PET lesion method (adaptive threshold after the PET immune-profiling method), configured
    in `pipelines.pet_quant` (`PetLesionSettings` adds CytAct)."""

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
    # Automatic detection: candidates scored below this are not offered (0: all are; pipelines/petlesions/candidates.py).
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

    @model_validator(mode="after")
    def _shell_is_a_shell(self) -> PetLesionSettings:
        if self.background_outer_mm <= self.background_inner_mm:
            raise ValueError("background_outer_mm must be greater than background_inner_mm")
        return self


def lesion_method_settings(pipelines: Strict) -> PetLesionSettings:
    """The PET lesion method's parameters as the node configures them, for a pipeline that uses the method (the CT
    pipeline's lesions from the study's PET): the one block of the composed `pipelines` settings that holds them
    (`pipelines.pet_quant`), found by its type rather than a pipeline's name; the method's defaults on a node
    without such a block. Raises ConfigurationProblem when more than one block holds them."""
    blocks = {name: block for name, block in pipelines if isinstance(block, PetLesionSettings)}
    if len(blocks) > 1:
        names = ", ".join(f"pipelines.{name}" for name in sorted(blocks))
        raise ConfigurationProblem("pipelines", f"the PET lesion method is configured in more than one block ({names})")
    return next(iter(blocks.values()), PetLesionSettings())
