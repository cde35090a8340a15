"""The store's own typed values: an instance as received and stored, a study as routing sees it, a job to
queue and a job as the runner claims it, a delivery due, and the snapshots `immunode status` prints.
Returned by the storage functions; never ORM rows.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from common.states import JobState, OutputKind, PairingOutcome
from common.types import SeriesFiles


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
    study_description: str = ""
    patient_name: str = field(default="", repr=False)  # for the study list only: never in a log line
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


@dataclass(frozen=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str
    series_description: str
    manufacturer: str
    frame_of_reference_uid: str
    instance_count: int


class ArrivalKind(enum.Enum):
    """What re-opened a study analysed before (the reason a new version of its results states)."""

    FIRST = "FIRST"  # the study's first revision
    IMAGES = "IMAGES"  # new images (the study grew after its analysis), with or without annotations
    ANNOTATIONS = "ANNOTATIONS"  # only readers' annotation objects (SEG, RTSTRUCT, SR)
    OWN_RESULTS = "OWN_RESULTS"  # only this node's own results, sent back by a PACS: nothing to re-run


@dataclass(frozen=True)
class ArrivedSeries:
    """Instances of one series received since the study's previous completion."""

    series_instance_uid: str
    modality: str
    instances: int
    calling_ae_titles: tuple[str, ...]
    first_received_at: datetime
    annotation: bool  # every instance is an annotation object
    own: bool  # every instance is one of this node's outputs


@dataclass(frozen=True)
class CompletedStudy:
    """A study quiet for the stability time, at the revision routing saw, with its series and, for a revision
    after the first, what arrived since the previous completion."""

    study_instance_uid: str
    revision: int
    series: tuple[SeriesSummary, ...]
    arrived: tuple[ArrivedSeries, ...] = ()

    @property
    def arrival(self) -> ArrivalKind:
        if self.revision == 1 or not self.arrived:
            return ArrivalKind.FIRST if self.revision == 1 else ArrivalKind.IMAGES
        if all(a.own for a in self.arrived):
            return ArrivalKind.OWN_RESULTS
        if all(a.annotation or a.own for a in self.arrived):
            return ArrivalKind.ANNOTATIONS
        return ArrivalKind.IMAGES


@dataclass(frozen=True)
class DueDelivery:
    """A delivery whose next attempt is due: the output file to send and to which destination."""

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
    selected_series: tuple[str, ...] = ()
    rule: str = ""  # the routing rule that queued it


@dataclass(frozen=True)
class JobClaim:
    """Who runs a job, as the index said when its run started: the node run that claimed it and when. A result is
    recorded only while the index still says so (`storage.jobs.check_claim`)."""

    job_id: int
    run_id: int | None
    started_at: datetime | None


@dataclass(frozen=True)
class NewJob:
    """A job routing asks for: the rule, the pipeline (its registry name), the series, its first state, and why
    it runs (stated by the report of a new version)."""

    rule: str
    pipeline: str
    series_instance_uids: tuple[str, ...]
    state: JobState
    reason: str = ""


@dataclass(frozen=True)
class WaitingJob:
    """A job in the pairing stage (PAIRING or WAITING_BASELINE)."""

    job_id: int
    pipeline: str
    study_instance_uid: str
    waiting_until: datetime | None


@dataclass(frozen=True)
class PairingRecord:
    outcome: PairingOutcome
    baseline_study_uid: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    pipeline: str
    state: JobState
    study_instance_uid: str
    error: str
    waiting_until: datetime | None
    pairing: PairingRecord | None
    summary: str = ""  # what a succeeded job found (its results)


@dataclass(frozen=True)
class DeliveryStatus:
    delivery_id: int
    kind: OutputKind
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    last_error: str
    next_attempt_at: datetime | None = None  # pending ones: when they are tried next


@dataclass(frozen=True)
class EventRecord:
    at: datetime
    level: str
    study_instance_uid: str
    message: str


@dataclass(frozen=True)
class StoredAssessment:
    """A follow-up CT's assessment as the index keeps it, with its patient and baseline (research tables)."""

    patient_id: str
    issuer_of_patient_id: str
    baseline_study_uid: str
    study_instance_uid: str
    study_date: date | None
    assessment: int | None  # 1 = T1; None for assessments stored before time points were kept
    category: str
    best_response: str
    resistance: str  # none / primary / acquired; "" before it was kept
    pattern: str
    new_lesions: int | None
    progressive_lesions: int | None
    deltas: Mapping[str, float | None] | None
    # The first assessment (T1) only: its P/M feature values and the baseline's (T0), volume → name → value, for
    # the method's redundancy filter on the T0/T1 values; empty otherwise.
    features_t0: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    features_t1: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class LesionCytAct:
    tracking_uid: str
    lesion_number: int
    cytact: float | None
    long_axis_mm: float
    patient_summary: bool


@dataclass(frozen=True)
class PetCytActAnalysis:
    """One successful PET analysis of a patient with its lesions' CytAct (for `immunode analyse-outcomes`)."""

    patient_id: str
    issuer_of_patient_id: str
    study_instance_uid: str
    study_date: date | None
    job_id: int
    model: str  # the CytAct model's key (name, version, weights sha256)
    lesions: tuple[LesionCytAct, ...]

    @property
    def summary_cytact(self) -> tuple[float, ...]:
        """CytAct of the lesions the patient summary is over."""
        return tuple(x.cytact for x in self.lesions if x.patient_summary and x.cytact is not None)


@dataclass(frozen=True)
class PatientSeries:
    """A stored series of one modality with its patient and study (research training reads slides this way)."""

    patient_id: str
    issuer_of_patient_id: str
    study_instance_uid: str
    study_date: str
    series: SeriesFiles


@dataclass(frozen=True)
class ResultVersionRecord:
    """One version of a pipeline's results for a study: the job that wrote it, why, its series and its SR (and
    the SR it supersedes), for `immunode status` and the status page."""

    pipeline: str
    number: int
    job_id: int
    reason: str
    written_at: datetime
    series_numbers: tuple[int, ...]
    sr_sop_instance_uid: str
    supersedes_sop_instance_uid: str

    def line(self) -> str:
        numbers = ", ".join(str(n) for n in self.series_numbers) or "-"
        supersedes = f" (supersedes {self.supersedes_sop_instance_uid})" if self.supersedes_sop_instance_uid else ""
        reason = self.reason or "reason not recorded"
        return f"series {numbers}; SR {self.sr_sop_instance_uid or '-'}{supersedes}: {reason}"


@dataclass(frozen=True)
class StudyVersions:
    """The chain of result versions of one study, oldest first."""

    study_instance_uid: str
    versions: tuple[ResultVersionRecord, ...]
