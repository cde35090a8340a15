"""Typed, frozen values that cross between the store and the pipelines: what pairing knows about a study,
a baseline as the store keeps it, a patient's imported data, the files a job produced and the records a
job's result leaves in the index. Pipeline-internal values live in their pipeline's `types.py`; the store's
own snapshots in `storage.types`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar

from common.records import Entries, RecordTable
from common.states import OutputKind, SegEncoding

T = TypeVar("T")


def from_attributes(cls: type[T], source: object, **values: object) -> T:
    """A dataclass whose fields not given in `values` are the same-named attributes of `source`."""
    taken = {f.name: getattr(source, f.name) for f in fields(cls) if f.name not in values and hasattr(source, f.name)}
    return cls(**taken, **values)


def parse_dicom_date(value: str | None) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when empty or malformed."""
    try:
        return datetime.strptime(value.strip(), "%Y%m%d").date()  # type: ignore[union-attr]
    except (ValueError, AttributeError):
        return None


# Readers' annotation objects (DICOM SEG, RT Structure Set, structured reports): a study that receives only these
# after its analysis is routed after the short `routing.annotation_stable_s` (reader in the loop).
ANNOTATION_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    }
)


# --- pairing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFacts:
    """What pairing needs to know about a study (stored, or found on the query/retrieve peer)."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: date | None
    # Modalities in the study; empty when unknown (a query/retrieve peer that does not return them).
    modalities: frozenset[str] = frozenset()

    def may_hold(self, modality: str) -> bool:
        return not self.modalities or modality in self.modalities


class LesionRole(enum.Enum):
    PRIMARY = "primary"
    METASTASIS = "metastasis"


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


@dataclass(frozen=True)
class PriorAssessment:
    """An earlier assessment (follow-up) of the same baseline: its RECIST sum and category, for the nadir, the best
    response and whether a progression is acquired resistance; its lesions' diameters, for each lesion's nadir."""

    study_instance_uid: str
    study_date: date | None
    number: int  # 1 = T1, the first assessment after the baseline
    sum_mm: float | None
    category: str  # CR, PR, SD, PD; "" when not assessed
    # Each lesion's RECIST diameter at this assessment by tracking UID, for each lesion's nadir (a baseline lesion
    # absent here had disappeared: 0); None when not stored (the baseline diameter stands in).
    lesion_diameters_mm: Mapping[str, float] | None = None
    deltas: Mapping[str, float | None] | None = None  # the T1 Δ features (assessment 1 only)


@dataclass(frozen=True)
class EarlierFollowUp:
    """A follow-up of the patient already paired with a baseline (a later study is a later assessment of it)."""

    study_instance_uid: str
    study_date: date | None
    baseline_study_uid: str


@dataclass(frozen=True, eq=False)
class Baseline:
    """A paired baseline (T0) as the store holds it: its CT, lesions, features and report, and the assessments of
    it before this follow-up."""

    study_instance_uid: str
    study_date: date | None
    ct_paths: tuple[Path, ...]
    lesions: tuple[BaselineLesion, ...]
    features: Mapping[str, Mapping[str, float]]  # volume → feature → value
    report_sop_instance_uid: str = ""  # the baseline's SR, when one was produced
    report_path: Path | None = None
    assessments: tuple[PriorAssessment, ...] = ()  # earlier follow-ups of this baseline, oldest first


# --- what a study holds, as a job reads it -------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass(frozen=True)
class SeriesFiles:
    """A received series of a study and its files in arrival order (objects this node produced are left out)."""

    series_instance_uid: str
    modality: str
    frame_of_reference_uid: str
    files: tuple[StoredFile, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)


@dataclass(frozen=True)
class PreviousReport:
    """The newest SR an earlier job of the same pipeline produced for a source series (to be superseded), and
    that job's SEG of the series (its lesions, whose tracking UIDs persist in the new version)."""

    sop_instance_uid: str
    path: Path
    segmentation_path: Path | None = None


@dataclass(frozen=True)
class ResultVersion:
    """Which version of a pipeline's results for a study a job writes and why (the reason its SR states), and
    every Series Number the study holds already (never reused: each version is a new series)."""

    number: int
    reason: str = ""
    series_numbers_used: frozenset[int] = frozenset()


# --- imported genomic and clinical data ----------------------------------------------------------------------


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
class ClinicalVariables:
    """Clinical variables of one patient as imported; dNLR and LIPI are derived at import; the index keeps
    `CLINICAL_FIELDS` (the import file names two of them differently, `pipelines.omics.imports`)."""

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


# Clinical values the index keeps per patient (every field but the identity), imported or derived.
CLINICAL_FIELDS = tuple(
    f.name for f in fields(ClinicalVariables) if f.name not in ("patient_id", "issuer_of_patient_id")
)


@dataclass(frozen=True)
class ExpressionImport:
    """An expression matrix as read and checked: its samples' profiles and how the file was read."""

    file: str
    orientation: str  # "genes x samples" or "samples x genes", as detected or forced
    orientation_reason: str
    genes: int
    profiles: tuple[ExpressionProfile, ...]


@dataclass(frozen=True)
class ClinicalImport:
    """A clinical table as read and checked: one record per patient."""

    file: str
    records: tuple[ClinicalVariables, ...]


@dataclass(frozen=True)
class BloodValue:
    """One blood immune-profile value of a patient at a time point (T0 before therapy, T1 on therapy)."""

    patient_id: str
    issuer_of_patient_id: str
    time_point: str  # "T0" or "T1"
    marker: str  # as declared in pipelines.response.blood_markers
    value: float
    unit: str = ""
    sample_date: date | None = None


@dataclass(frozen=True)
class BloodImport:
    file: str
    values: tuple[BloodValue, ...]


@dataclass(frozen=True)
class SlideRecord:
    """One whole-slide image's histology analysis as the index keeps it: the gated-attention MIL slide
    embedding (the attention fusion's histology modality) and the models that produced it."""

    series_instance_uid: str
    mil_model: str  # ModelIdentity.key of the MIL pooling
    encoder_model: str  # ModelIdentity.key of the patch encoder
    embedding: tuple[float, ...]
    probability: float  # the MIL head's own response probability (histology alone)
    patches: int
    tissue_fraction: float
    microns_per_pixel: float  # of the level the patches were read from


@dataclass(frozen=True, eq=False)
class PatientData:
    """What the store holds about a patient beyond images, for the response models."""

    patient_id: str
    issuer_of_patient_id: str
    expression: ExpressionProfile | None
    clinical: ClinicalVariables | None
    blood: tuple[BloodValue, ...] = ()
    slide: SlideRecord | None = None  # the latest analysed whole-slide image of the patient
    # Every expression sample ID imported for the patient (the leakage guard checks the patient, not one sample).
    expression_samples: tuple[str, ...] = ()


# --- what a job leaves behind --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    """A validated SEG or SR a job wrote, with the series it was derived from and the SR it supersedes."""

    kind: OutputKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    source_series_uid: str = ""
    supersedes_sop_instance_uid: str = ""  # an earlier SR of the same source series (Predecessor Documents)
    series_number: int | None = None
    # A SEG goes to the destinations that asked for one of these encodings; empty (an SR): to every destination.
    seg_encodings: tuple[SegEncoding, ...] = ()

    def goes_to(self, destination: ResultDestination) -> bool:
        return not self.seg_encodings or destination.seg_encoding in self.seg_encodings


@dataclass(frozen=True)
class ResultDestination:
    """A destination that receives results, as the job recording its outputs needs it."""

    name: str
    seg_encoding: SegEncoding = SegEncoding.FRACTIONAL


@dataclass(frozen=True)
class LesionRecord:
    """One PET lesion as the index keeps it (research statistics, the fusion model's imaging embedding)."""

    series_instance_uid: str
    lesion_number: int
    tracking_uid: str
    suv_max: float
    suv_mean: float
    suv_peak: float
    metabolic_volume_ml: float
    total_lesion_glycolysis: float
    long_axis_mm: float
    short_axis_mm: float
    recist_target: bool
    cytact: float | None = None
    cytact_model: str = ""
    embedding: tuple[float, ...] | None = None
    patient_summary: bool = False  # one of the lesions the patient-level CytAct summary is over


@dataclass(frozen=True)
class FeatureExtractionRecord:
    """pyradiomics features of one volume ("P", "M", "L<n>") with the parameters that produced them."""

    ct_series_uid: str
    volume: str
    tracking_uid: str
    voxel_count: int
    seconds: float
    pyradiomics_version: str
    parameters: str
    parameters_sha256: str
    features: Mapping[str, float]


@dataclass(frozen=True)
class CtLesionRecord:
    lesion_number: int
    tracking_uid: str
    tracking_identifier: str
    role: LesionRole
    source: str
    label: str
    lymph_node: bool
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    centroid: tuple[float, float, float]  # mm
    status: str  # "baseline", "matched", "new"
    progressive: bool


@dataclass(frozen=True)
class CtAssessmentRecord:
    """The patient-level CT assessment of a job: time point, RECIST figures (when paired), Δ, the classifier."""

    time_point: str
    baseline_study_uid: str
    deltas: Mapping[str, float | None] | None
    signature_class: str
    signature_probability: float | None
    sum_t0_mm: float | None = None  # RECIST 1.1 sums of diameters
    sum_t1_mm: float | None = None
    percent_change: float | None = None
    category: str = ""  # RECIST 1.1 response category
    new_lesions: int | None = None
    progressive_lesions: int | None = None
    pattern: str = ""  # acquired-resistance pattern at a progression after response or lasting SD
    assessment: int | None = None  # 1 = T1
    weeks: float | None = None
    nadir_mm: float | None = None
    best_response: str = ""
    resistance: str = ""  # none / primary / acquired


# The tables of the built-in pipelines' records (their pipelines declare them, `Writes.records`); here, not in
# the pipelines' packages, because the store reads them back for others: a baseline (CT), the patient's data
# (slides), the research tables (lesions, assessments).
LESION_RESULTS = RecordTable(LesionRecord, "lesion_results")
RADIOMICS_EXTRACTIONS = RecordTable(
    FeatureExtractionRecord,
    "radiomics_extractions",
    study_column=True,
    entries=Entries("features", "radiomic_features", "extraction_fk"),
)
CT_LESION_RESULTS = RecordTable(CtLesionRecord, "ct_lesion_results")
CT_ASSESSMENTS = RecordTable(
    CtAssessmentRecord,
    "ct_assessments",
    columns=(
        ("sum_t0_mm", "sum_diameters_t0_mm"),
        ("sum_t1_mm", "sum_diameters_t1_mm"),
        ("category", "recist_category"),
    ),
)
SLIDE_RESULTS = RecordTable(SlideRecord, "slide_results")


@dataclass(frozen=True)
class JobResult:
    """A finished analysis: its validated outputs, the summary for the index, the series it could not analyse
    (with why) and the records for the index. No outputs and problems: the job failed for those reasons."""

    outputs: tuple[OutputFile, ...]
    summary: str
    problems: tuple[str, ...] = ()
    # What the index keeps beyond the files: instances of the record types the pipeline declares
    # (`Writes.records`), of any of them, in any order.
    records: tuple[object, ...] = ()
