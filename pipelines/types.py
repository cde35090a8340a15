"""Typed, frozen values passed between the stages receive → store → route → analyse → report → dispatch.

Raw pydicom datasets appear only at the DICOM edges (parsing received bytes, building output objects).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np

# --- receive / store ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceHeader:
    """Identifying attributes of one received instance, validated at the receive edge."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    issuer_of_patient_id: str
    modality: str
    study_date: str = ""
    accession_number: str = ""
    series_number: int | None = None
    series_description: str = ""
    manufacturer: str = ""
    frame_of_reference_uid: str = ""
    instance_number: int | None = None


class StoreOutcome(enum.Enum):
    NEW = "NEW"
    DUPLICATE_IDENTICAL = "DUPLICATE_IDENTICAL"  # same UID, same bytes: acknowledged, nothing rewritten
    REPLACED = "REPLACED"  # same UID, different bytes: the newer copy replaces the stored one


@dataclass(frozen=True)
class StoredInstance:
    header: InstanceHeader
    path: Path
    sha256: str
    outcome: StoreOutcome


# --- route -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str
    series_description: str
    manufacturer: str
    frame_of_reference_uid: str
    instance_count: int


@dataclass(frozen=True)
class CompletedStudy:
    study_instance_uid: str
    revision: int
    series: tuple[SeriesSummary, ...]


@dataclass(frozen=True)
class RouteDecision:
    rule: str
    pipeline: str
    series_instance_uids: tuple[str, ...]


# --- analyse -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a volume stored as array[slice, row, column]."""

    origin_mm: tuple[float, float, float]  # patient position of voxel (0, 0, 0)
    spacing_mm: tuple[float, float, float]  # (column, row, slice) spacing, i.e. x, y, z of the grid
    row_direction: tuple[float, float, float]  # direction of increasing column index
    column_direction: tuple[float, float, float]  # direction of increasing row index
    slice_direction: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0


class SuvType(enum.Enum):
    BW = "SUVbw"  # body weight; stored SUVlbm/SUVibw/SUVbsa are converted to it


@dataclass(frozen=True)
class SuvConversion:
    """How stored values were turned into SUV, for the record and the report."""

    suv_type: SuvType
    units: str
    method: str  # human-readable account of the rule applied
    decay_correction: str
    injected_dose_bq: float | None
    decay_time_s: float | None
    half_life_s: float | None
    patient_weight_kg: float | None


@dataclass(frozen=True, eq=False)
class PetVolume:
    """A PET series as an SUV volume plus the instance order used to build it."""

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]  # one per slice, in array order
    source_paths: tuple[Path, ...]  # same order
    geometry: VolumeGeometry
    suv: np.ndarray  # float32 [slice, row, column]
    conversion: SuvConversion


@dataclass(frozen=True)
class ReaderSeed:
    """A reader's mark of one lesion (semi-automatic mode), in patient coordinates (mm)."""

    position_mm: tuple[float, float, float]
    lymph_node: bool = False  # the reader labelled it a lymph node (RECIST node rule applies)


@dataclass(frozen=True, eq=False)
class ReaderRegion:
    """A reader's lesion region (RTSTRUCT ROI, SEG segment) on an image grid: a bool mask of the grid's shape."""

    label: str
    mask: np.ndarray = field(repr=False)
    lymph_node: bool = False
    kind: str = ""  # "RTSTRUCT" or "SEG"


@dataclass(frozen=True)
class LesionMeasurements:
    suv_max: float
    suv_mean: float
    suv_peak: float
    metabolic_volume_ml: float
    total_lesion_glycolysis: float  # SUVmean × MTV, in g (SUVbw) units
    voxel_count: int
    threshold_suv: float  # T = β·I70 + I_background
    i70_suv: float
    background_suv: float
    centroid_mm: tuple[float, float, float]
    long_axis_mm: float  # RECIST 1.1 in-plane diameters measured on the mask
    short_axis_mm: float
    recist_target: bool  # meets the RECIST 1.1 size rule for a target lesion (nodes: short axis >= 15 mm)
    lymph_node: bool = False  # a reader labelled the lesion a lymph node


@dataclass(frozen=True, eq=False)
class Lesion:
    number: int  # 1-based; the SEG segment number
    tracking_identifier: str
    tracking_uid: str
    measurements: LesionMeasurements
    # The lesion's voxels as a bool mask of its bounding box, which starts at `offset` (slice, row, column)
    # of the PET volume: whole-volume masks of many lesions would cost gigabytes.
    offset: tuple[int, int, int]
    mask: np.ndarray = field(repr=False)
    cytact: float | None = None  # predicted cytolytic activity score, when the model ran
    embedding: tuple[float, ...] | None = None  # the CytAct network's lesion embedding, when the model ran
    location: str = ""  # coarse anatomical location from the CT, when derivable

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape))  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    weights_sha256: str
    synthetic: bool  # trained on synthetic demonstration data only

    @property
    def key(self) -> str:
        """How results name the model in the index (and the fusion model names its imaging source)."""
        return f"{self.name} {self.version} sha256:{self.weights_sha256[:16]}"


@dataclass(frozen=True)
class CytActSummary:
    """Patient-level biomarkers from lesion CytAct (PET immune-profiling method)."""

    model: ModelIdentity
    minimum: float  # the representative value
    mean: float
    maximum: float
    variance: float | None  # across lesions, when there are two or more
    low_group: bool  # minimum below the cut-off
    low_group_cutoff: float
    heterogeneous: bool | None  # variance above the cut-off; None with fewer than two lesions
    heterogeneity_cutoff: float


@dataclass(frozen=True)
class ResponsePredictions:
    """Patient-level response models served with the PET report; each part says why when it is absent."""

    expression_probability: float | None = None
    expression_model: ModelIdentity | None = None
    expression_sample: str = ""
    expression_not_computed: str = ""
    fusion_probability: float | None = None
    fusion_weights: tuple[tuple[str, float], ...] = ()  # (modality, weight) of the modalities present
    fusion_model: ModelIdentity | None = None
    fusion_not_computed: str = ""
    lipi: str = ""  # good / intermediate / poor
    dnlr: float | None = None
    lipi_not_computed: str = ""


@dataclass(frozen=True, eq=False)
class PetQuantResult:
    volume: PetVolume
    lesions: tuple[Lesion, ...]
    parameters: str  # the effective parameters, recorded in the report
    cytact: CytActSummary | None = None
    cytact_not_computed: str = ""  # why there is no CytAct summary, when there is none
    reader_seeds: int = 0  # semi-automatic mode: how many reader annotations (regions and points) defined lesions
    annotations_left_out: tuple[str, ...] = ()  # "label: why" of annotated regions that are not lesions
    # Automatic detection: physiological uptake left out, lesions too small or beyond the cap (for the SR).
    detection_notes: tuple[str, ...] = ()
    response: ResponsePredictions | None = None  # imported expression / clinical data models, when run


@dataclass(frozen=True)
class AlgorithmIdentity:
    name: str
    version: str
    # sha256 of the weights that produced the result; for a weight-free algorithm, of its parameters.
    parameters_sha256: str
    parameters: str


# --- analyse: CT radiomics, pairing, tracking (longitudinal delta-radiomics method) ---------------------------


class LesionRole(enum.Enum):
    PRIMARY = "primary"
    METASTASIS = "metastasis"


@dataclass(frozen=True, eq=False)
class CtLesion:
    """A lesion on the CT grid; `mask` is a bool box starting at `offset` (slice, row, column) of the CT."""

    number: int  # 1-based; the SEG segment number
    tracking_identifier: str
    tracking_uid: str
    role: LesionRole
    source: str  # "annotation" (SEG/RTSTRUCT on the CT) or "pet" (PET lesion of the study on the CT grid)
    label: str  # the annotation's label, or the PET lesion's
    lymph_node: bool
    offset: tuple[int, int, int]
    mask: np.ndarray = field(repr=False)
    volume_ml: float = 0.0
    centroid_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape))  # type: ignore[return-value]

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
class StudyFacts:
    """What pairing needs to know about a stored CT study."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: date | None
    has_ct: bool = True


class PairingDecisionKind(enum.Enum):
    PAIRED = "PAIRED"
    NO_BASELINE = "NO_BASELINE"
    BASELINE_ITSELF = "BASELINE_ITSELF"


@dataclass(frozen=True)
class PairingChoice:
    kind: PairingDecisionKind
    baseline: StudyFacts | None
    reason: str


@dataclass(frozen=True)
class BaselineLesion:
    tracking_uid: str
    tracking_identifier: str
    role: LesionRole
    lymph_node: bool
    centroid_mm: tuple[float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    volume_ml: float

    @property
    def recist_diameter_mm(self) -> float:
        return self.short_axis_mm if self.lymph_node else self.long_axis_mm


@dataclass(frozen=True, eq=False)
class Baseline:
    """A paired baseline (T0) as the store holds it: its CT, lesions, features and report."""

    study_instance_uid: str
    study_date: date | None
    ct_paths: tuple[Path, ...]
    lesions: tuple[BaselineLesion, ...]
    features: Mapping[str, Mapping[str, float]]  # volume → feature → value
    report_sop_instance_uid: str = ""  # the baseline's SR, when one was produced
    report_path: Path | None = None


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
    progressive: bool = False

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


@dataclass(frozen=True)
class RecistAssessment:
    """RECIST 1.1 from masks at T0 and T1 and the acquired-resistance pattern of the delta-radiomics method."""

    target_uids: tuple[str, ...]
    sum_t0_mm: float
    sum_t1_mm: float
    percent_change: float | None
    category: str  # CR, PR, SD, PD
    new_lesions: int
    progressive_lesions: int
    pattern: str  # "oligo" (1..3 new or progressive), "systemic" (> 3), "none" (no new or progressive lesion)


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


# --- imported genomic and clinical data ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportProblem:
    """One rejected value of an import file: where it is and why (rows count from 1, the header is row 1)."""

    file: str
    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column!r}" if self.column else "")
        return f"{self.file}: {where}: {self.reason}"


@dataclass(frozen=True, eq=False)
class ExpressionProfile:
    """A tumour mRNA expression profile of one sample, mapped to its patient."""

    sample_id: str
    patient_id: str
    issuer_of_patient_id: str
    units: str  # "tpm" or "counts"
    values: Mapping[str, float]  # gene symbol (upper case) → value
    cytact: float | None = None  # Rooney 2015: geometric mean of GZMA and PRF1
    ifng6: float | None = None  # Ayers 2017: mean log2(x + 1) of the six IFN-gamma genes


@dataclass(frozen=True)
class ExpressionImport:
    file: str
    orientation: str  # "genes x samples" or "samples x genes", as detected or forced
    orientation_reason: str
    genes: int
    profiles: tuple[ExpressionProfile, ...]


@dataclass(frozen=True)
class ClinicalVariables:
    """Clinical variables of one patient as imported; dNLR and LIPI are derived at import."""

    patient_id: str
    issuer_of_patient_id: str = ""
    age_years: float | None = None
    sex: str = ""  # M, F, O or empty
    ecog: int | None = None
    ldh: float | None = None
    ldh_uln: float | None = None
    neutrophils: float | None = None  # 10^9/L
    white_cells: float | None = None  # 10^9/L
    therapy_start: date | None = None
    best_response: str = ""  # CR, PR, SD, PD, NE or empty
    pfs_months: float | None = None
    pfs_event: bool | None = None
    os_months: float | None = None
    os_event: bool | None = None
    dnlr: float | None = None
    lipi: str = ""  # good / intermediate / poor; empty when dNLR or LDH/ULN is unknown


@dataclass(frozen=True)
class ClinicalImport:
    file: str
    records: tuple[ClinicalVariables, ...]


@dataclass(frozen=True, eq=False)
class PatientData:
    """What the store holds about a patient beyond images, for the response models."""

    patient_id: str
    issuer_of_patient_id: str
    expression: ExpressionProfile | None
    clinical: ClinicalVariables | None


# --- report / dispatch ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFile:
    kind: str  # "SEG" or "SR"
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class Report:
    files: tuple[ReportFile, ...]
    summary: str


@dataclass(frozen=True)
class SendResult:
    sop_instance_uid: str
    ok: bool
    detail: str  # status code in hex or the reason nothing came back


@dataclass(frozen=True)
class DueDelivery:
    delivery_id: int
    destination: str
    path: Path
    sop_instance_uid: str
    attempts: int
    sha256: str = ""  # of the output as written and validated ("" for outputs indexed before it was kept)


@dataclass(frozen=True)
class JobSpec:
    job_id: int
    pipeline: str
    study_instance_uid: str
    study_revision: int
    created_at: datetime
