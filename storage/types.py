"""The store's own typed values: an instance as received and stored, a study as routing sees it, a job to
queue and a job as the runner claims it, a delivery due, and the snapshots `immunode status` prints.
Returned by the storage functions; never ORM rows.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CompletedStudy:
    """A study quiet for the stability time, at the revision routing saw, with its series."""

    study_instance_uid: str
    revision: int
    series: tuple[SeriesSummary, ...]


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
class NewJob:
    """A job routing asks for: the rule, the pipeline (its registry name), the series, its first state."""

    rule: str
    pipeline: str
    series_instance_uids: tuple[str, ...]
    state: JobState


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
class StudyStatus:
    study_instance_uid: str
    state: str
    revision: int
    last_received_at: datetime


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
