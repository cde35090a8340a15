"""Values of the PET pipeline: the CytAct summary, the result per series and per job (the SUV volume and the
lesions are the PET lesion method's, `pipelines.petlesions.types`)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.omics.types import ResponsePredictions
from pipelines.petlesions.types import Lesion, PetVolume
from pipelines.types import ModelIdentity


@dataclass(frozen=True)
class CytActSummary:
    """Patient-level biomarkers from lesion CytAct (PET immune-profiling method), over the lesions named."""

    model: ModelIdentity
    lesions: tuple[int, ...]  # the lesion numbers summarised (RECIST target lesions, unless configured otherwise)
    selection: str  # how they were chosen, in words
    minimum: float  # the representative value
    mean: float
    maximum: float
    variance: float | None  # across lesions, when there are two or more
    low_group: bool | None  # minimum below the cut-off; None when the cut-off does not belong to these weights
    low_group_cutoff: float
    # Variance above the site's cut-off (the paper gives none); None: no site cut-off, fewer than two lesions, or
    # the cut-offs belong to other weights.
    heterogeneous: bool | None
    heterogeneity_cutoff: float | None
    groups_not_given: str = ""  # why no group is reported, when none is


@dataclass(frozen=True, eq=False)
class CytActPrediction:
    """Every lesion with its predicted CytAct, the model that predicted it, and the patient summary (None with the
    reason when no lesion meets the summary's rule)."""

    lesions: tuple[Lesion, ...]
    model: ModelIdentity
    summary: CytActSummary | None
    not_computed: str = ""


@dataclass(frozen=True, eq=False)
class PetQuantResult:
    volume: PetVolume
    lesions: tuple[Lesion, ...]
    parameters: str  # the effective parameters, recorded in the report
    cytact: CytActSummary | None = None
    cytact_not_computed: str = ""  # why there is no CytAct summary, when there is none
    cytact_model: ModelIdentity | None = None  # the model that predicted the lesions' CytAct, when it ran
    reader_seeds: int = 0  # semi-automatic mode: how many reader annotations (regions and points) defined lesions
    annotations_left_out: tuple[str, ...] = ()  # "label: why" of annotated regions that are not lesions
    # Automatic detection: physiological uptake left out, lesions too small or beyond the cap (for the SR).
    detection_notes: tuple[str, ...] = ()
    response: ResponsePredictions | None = None  # imported expression / clinical data models, when run


@dataclass(frozen=True, eq=False)
class PetJob:
    """A `pet_quant` job's analysis: one result per PET series analysed, and the series that could not be
    (with why)."""

    results: tuple[PetQuantResult, ...]
    problems: tuple[str, ...] = ()
