"""Values of the longitudinal CT pipeline: CT lesions, feature sets, lesion changes, RECIST, Δ features, the result."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common.types import Baseline, LesionRole
from pipelines.types import AnnotationSource, ModelIdentity, SegmentedLesion, VolumeGeometry


@dataclass(frozen=True, eq=False)
class CtLesion(SegmentedLesion):
    """A lesion on the CT grid: its segment, its role in the method and its size."""

    role: LesionRole
    source: str  # "annotation" (SEG/RTSTRUCT on the CT) or "pet" (PET lesion of the study on the CT grid)
    label: str  # the annotation's label, or the PET lesion's
    lymph_node: bool
    volume_ml: float = 0.0
    centroid_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0
    # The readers' annotated regions behind it (several when one tumour was annotated more than once, e.g. on the
    # PET and on the CT, and the regions were merged: pipelines.imaging.contours.merge_regions), and how.
    sources: tuple[AnnotationSource, ...] = ()
    merge_note: str = ""

    @property
    def recist_diameter_mm(self) -> float:
        """RECIST 1.1: short axis for lymph nodes, long axis otherwise."""
        return self.short_axis_mm if self.lymph_node else self.long_axis_mm


@dataclass(frozen=True)
class FeatureSet:
    """pyradiomics features of one volume: "P" primary, "M" merged metastases, "L<n>" lesion n."""

    volume: str
    voxel_count: int
    seconds: float
    features: Mapping[str, float]
    tracking_uid: str = ""


@dataclass(frozen=True)
class LesionChange:
    """One lesion across the pair: matched (same tracking UID as at T0), new at T1, or gone at T1."""

    tracking_uid: str
    tracking_identifier: str
    status: str  # "matched", "new", "disappeared"
    diameter_t0_mm: float | None
    diameter_t1_mm: float | None
    volume_t0_ml: float | None
    volume_t1_ml: float | None
    distance_mm: float | None  # between mapped baseline centroid and follow-up centroid, when matched
    progressive: bool = False  # grown by the progression rule since the lesion's nadir
    nadir_mm: float | None = None  # the lesion's smallest diameter so far (baseline and earlier assessments)

    @property
    def diameter_delta(self) -> float | None:
        return relative_change(self.diameter_t0_mm, self.diameter_t1_mm)

    @property
    def volume_delta(self) -> float | None:
        return relative_change(self.volume_t0_ml, self.volume_t1_ml)


def relative_change(t0: float | None, t1: float | None) -> float | None:
    """Δ = (T1 − T0)/T0. Rule for T0 = 0: Δ = 0 when T1 is also 0, otherwise undefined (None) —
    no finite relative change exists, and the report says "not defined" rather than inventing one."""
    if t0 is None or t1 is None:
        return None
    if t0 == 0:
        return 0.0 if t1 == 0 else None
    return (t1 - t0) / t0


class Resistance(enum.Enum):
    """What a progression means in the delta-radiomics method."""

    NONE = "none"  # no progression at this assessment
    PRIMARY = "primary"  # progression without an earlier response or lasting stable disease
    ACQUIRED = "acquired"  # progression after CR/PR, or after stable disease of `stable_disease_min_weeks`


@dataclass(frozen=True)
class RecistAssessment:
    """RECIST 1.1 from masks at one assessment (T1, T2, ...) against the baseline T0, and, at a progression,
    whether it is acquired resistance with its pattern (oligo: <= 3 new or progressive lesions; systemic: > 3)."""

    target_uids: tuple[str, ...]
    sum_t0_mm: float
    sum_t1_mm: float  # at this assessment
    percent_change: float | None  # against the baseline
    category: str  # CR, PR, SD, PD
    new_lesions: int
    progressive_lesions: int
    pattern: str  # acquired resistance only: "oligo" or "systemic"; "" otherwise
    assessment: int = 1  # 1 = T1
    weeks: float | None = None  # since the baseline
    nadir_mm: float = 0.0  # the smallest sum so far (baseline included): progression is measured from it
    best_response: str = ""  # best category up to and including this assessment
    resistance: Resistance = Resistance.NONE


@dataclass(frozen=True)
class DeltaFeature:
    """A published signature feature at T0 and T1, its Δ, and which published group median it lies nearer to."""

    name: str  # "P_..." or "M_..." as published
    t0: float | None
    t1: float | None
    delta: float | None
    oligo_median: float
    systemic_median: float
    auc: float | None
    nearer: str  # "oligo", "systemic", "equidistant" or "" (Δ not defined)
    not_defined: str = ""  # why Δ is missing


@dataclass(frozen=True)
class SignatureClass:
    label: str  # "oligo" or "systemic"
    probability_systemic: float
    model: ModelIdentity


@dataclass(frozen=True, eq=False)
class CtRadiomicsResult:
    study_instance_uid: str
    ct_series_uid: str
    ct_paths: tuple[Path, ...]  # in slice order (the SEG's source images)
    geometry: VolumeGeometry
    lesions: tuple[CtLesion, ...]
    lesion_source: str  # "annotation" or "pet"
    primary_reason: str  # how the primary was chosen
    features: tuple[FeatureSet, ...]
    parameters: str  # pyradiomics parameter file (YAML), as used
    pyradiomics_version: str
    time_point: str  # "T0" baseline-only, "T1" follow-up paired with a baseline
    pairing_reason: str
    baseline: Baseline | None = None
    registration: str = ""  # what registration was done and how well it fits
    changes: tuple[LesionChange, ...] = ()
    recist: RecistAssessment | None = None
    deltas: Mapping[str, float | None] = field(default_factory=dict)  # all features, "P_..." / "M_..."
    signature_features: tuple[DeltaFeature, ...] = ()
    signature_not_reported: str = ""
    signature_class: SignatureClass | None = None
    signature_class_not_given: str = ""
    # Annotated regions that are not lesions (organs at risk, body outline, planning volumes): "label: why".
    not_lesions: tuple[str, ...] = ()
    # The method's time points and resistance rule as configured (stated in the report).
    t1_window_weeks: tuple[float, float] = (9.0, 12.0)
    stable_disease_min_weeks: float = 26.0
