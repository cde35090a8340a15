"""SQL schema of the index: patients, studies, series, instances, jobs, outputs, deliveries, events, imported
patient data, pairings. The tables of the pipelines' result records are not here: each is declared with its
record type (`common.records.RecordTable`) and mapped by `storage.records`.

Enum-typed states are stored as their names (native_enum=False) so that SQLite and PostgreSQL hold
the same values and a migration never has to alter a database enum type.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from common.states import JobState, OutputKind, PairingOutcome

__all__ = ["JobState", "OutputKind", "PairingOutcome"]  # stored by name in the tables below


def utcnow() -> datetime:
    # Naive UTC everywhere: SQLite drops time zones, so aware values would compare unequal after a round trip.
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=32, validate_strings=True)


class StudyState(enum.Enum):
    RECEIVING = "RECEIVING"  # instances arriving; not yet quiet for the stability time
    COMPLETE = "COMPLETE"  # quiet for the stability time and routed


class DeliveryState(enum.Enum):
    PENDING = "PENDING"  # waiting for its next attempt (next_attempt_at)
    SENT = "SENT"
    DEAD = "DEAD"  # attempts exhausted; `immunode retry` re-queues


class ConflictKind(enum.Enum):
    PATIENT = "PATIENT"  # PatientID / IssuerOfPatientID differ from those of the instance's study
    STUDY = "STUDY"  # the series (or the SOP instance) is indexed under another study


class AuditDirection(enum.Enum):
    INBOUND = "INBOUND"  # a peer connected to this node
    OUTBOUND = "OUTBOUND"  # this node connected to a peer (results sent, query/retrieve)
    LOCAL = "LOCAL"  # this node acting on its own store (retention)


class AuditKind(enum.Enum):
    ASSOCIATION = "ASSOCIATION"  # an inbound association request, accepted or rejected
    CONNECTION = "CONNECTION"  # an inbound connection that never made an association request
    SEND = "SEND"  # results sent by C-STORE (or STOW-RS)
    QUERY = "QUERY"  # C-FIND (or QIDO-RS) at the query/retrieve peer
    RETRIEVE = "RETRIEVE"  # C-MOVE (or WADO-RS) at the query/retrieve peer
    STOW = "STOW"  # an inbound DICOMweb STOW-RS request, accepted or refused
    PURGE = "PURGE"  # a study's files and index rows deleted by retention


class AuditOutcome(enum.Enum):
    COMPLETED = "COMPLETED"  # association released normally; outbound: every operation succeeded
    REJECTED = "REJECTED"  # A-ASSOCIATE-RJ (sent to or received from the peer)
    ABORTED = "ABORTED"  # A-ABORT or a dropped connection after negotiation
    CLOSED = "CLOSED"  # connection closed or timed out before an association was negotiated
    FAILED = "FAILED"  # outbound: no association, or no operation succeeded
    PARTIAL = "PARTIAL"  # outbound: some operations failed


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patient_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    # Empty string, not NULL, when absent so the unique constraint also holds for patients without an issuer.
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    # The study list and retention order studies by their last instance received.
    __table_args__ = (Index("ix_studies_last_received_at", "last_received_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    # As the first instance named it (PN, all component groups); shown only when `monitoring.show_patient_names`.
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    # Incremented each time instances re-open a complete study; jobs record the revision they analysed.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    frame_of_reference_uid: Mapped[str] = mapped_column(String(64), default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    # Relative to the storage root; chosen by the server, never derived from received values.
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    times_received: Mapped[int] = mapped_column(Integer, default=1)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64), default="")
    # Space-separated Series Instance UIDs the routing rule selected.
    series_uids: Mapped[str] = mapped_column(Text, default="")
    study_revision: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    # Why this job ran: the study's first analysis, new images, a reader's annotation, a re-pairing (the report
    # of a new version states it).
    reason: Mapped[str] = mapped_column(Text, default="")
    # WAITING_BASELINE jobs run without their baseline after this time.
    waiting_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    # The node run that claimed the job (running it, or pairing it until `lease_until`): with several nodes on
    # one index, a job is worked on by one of them; a dead run's claims are taken back (see storage.runs).
    claimed_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)

    study: Mapped[Study] = relationship(back_populates="jobs")
    outputs: Mapped[list[Output]] = relationship(back_populates="job")


class Output(Base):
    __tablename__ = "outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[OutputKind] = mapped_column(_enum(OutputKind))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    # The analysed series this object was derived from.
    source_series_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(255))
    # Of the file as written and validated: dispatch sends nothing whose bytes changed since.
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # Never reused within the study: each version of a result is a new series with its own number.
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The SR this one supersedes (an earlier revision of the same study), if any.
    supersedes_fk: Mapped[int | None] = mapped_column(ForeignKey("outputs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="outputs")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="output")


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("output_fk", "destination", name="uq_delivery_output_destination"),
        Index("ix_deliveries_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_fk: Mapped[int] = mapped_column(ForeignKey("outputs.id"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    # The node run sending it, until `lease_until` (several nodes never send one delivery at the same time).
    claimed_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)

    output: Mapped[Output] = relationship(back_populates="deliveries")


class ExpressionSample(Base):
    """One imported tumour mRNA expression profile and the scores derived from it."""

    __tablename__ = "expression_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(128), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    units: Mapped[str] = mapped_column(String(16))  # "tpm" or "counts", as stated at import
    source_file: Mapped[str] = mapped_column(String(255), default="")
    # {gene symbol: value} as imported (all genes of the file, not only a panel).
    values: Mapped[dict] = mapped_column(JSON)
    cytact: Mapped[float | None] = mapped_column(Float, nullable=True)  # Rooney 2015 geometric mean
    ifng6: Mapped[float | None] = mapped_column(Float, nullable=True)  # Ayers 2017 6-gene mean log2
    imported_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class ClinicalRecord(Base):
    """Imported clinical variables of one patient, with derived NLR and LIPI category."""

    __tablename__ = "clinical_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), unique=True)
    age_years: Mapped[float | None] = mapped_column(Float, nullable=True)
    sex: Mapped[str] = mapped_column(String(1), default="")  # DICOM codes M, F, O; empty when unknown
    ecog: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ldh: Mapped[float | None] = mapped_column(Float, nullable=True)  # U/L
    ldh_uln: Mapped[float | None] = mapped_column(Float, nullable=True)
    neutrophils: Mapped[float | None] = mapped_column(Float, nullable=True)  # 10^9/L
    white_cells: Mapped[float | None] = mapped_column(Float, nullable=True)  # 10^9/L
    therapy_start: Mapped[date | None] = mapped_column(Date, nullable=True)
    best_response: Mapped[str] = mapped_column(String(2), default="")  # RECIST: CR PR SD PD NE
    pfs_months: Mapped[float | None] = mapped_column(Float, nullable=True)
    pfs_event: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    os_months: Mapped[float | None] = mapped_column(Float, nullable=True)
    os_event: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    dnlr: Mapped[float | None] = mapped_column(Float, nullable=True)  # neutrophils / (white cells - neutrophils)
    lipi: Mapped[str] = mapped_column(String(16), default="")  # good / intermediate / poor; empty: not derivable
    source_file: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class BloodRecord(Base):
    """One imported blood immune-profile value of a patient at T0 or T1 (markers as the site declares them)."""

    __tablename__ = "blood_values"
    __table_args__ = (UniqueConstraint("patient_fk", "time_point", "marker", name="uq_blood_value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    time_point: Mapped[str] = mapped_column(String(2))  # T0 / T1
    marker: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32), default="")
    sample_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    source_file: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class Pairing(Base):
    """A baseline pairing decision for a longitudinal job: what was chosen (or not) and why."""

    __tablename__ = "pairings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    outcome: Mapped[PairingOutcome] = mapped_column(_enum(PairingOutcome))
    # The chosen or awaited baseline study (it may not be stored yet while it is retrieved).
    baseline_study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    reason: Mapped[str] = mapped_column(Text, default="")


class Event(Base):
    """What happened that an administrator must be able to see: rejections, failures, pairing decisions."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, index=True)
    level: Mapped[str] = mapped_column(String(16))
    # UID of the study concerned when known (a rejected instance may not name a decodable study).
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    message: Mapped[str] = mapped_column(Text)


class IdentityConflict(Base):
    """An instance refused because its identity contradicts what the index holds for its study or series."""

    __tablename__ = "identity_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, index=True)
    kind: Mapped[ConflictKind] = mapped_column(_enum(ConflictKind))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    received_patient_id: Mapped[str] = mapped_column(String(64))
    received_issuer: Mapped[str] = mapped_column(String(64))
    indexed_patient_id: Mapped[str] = mapped_column(String(64))
    indexed_issuer: Mapped[str] = mapped_column(String(64))
    indexed_study_uid: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")


class QuarantinedFile(Base):
    """A file found in the object store without an index row (a crash between write and commit) that could
    not be indexed; moved to `<root>/quarantine/` with the reason."""

    __tablename__ = "quarantined_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, index=True)
    path: Mapped[str] = mapped_column(String(255))  # relative to the storage root, under quarantine/
    original_path: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")


class NodeRun(Base):
    """One run of `immunode serve`: a run without `stopped_at` ended without a clean stop, and the object
    store is reconciled with the index from its start date on."""

    __tablename__ = "node_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    clean_stop: Mapped[bool] = mapped_column(Boolean, default=False)  # false with stopped_at: found dead later
    orphans_indexed: Mapped[int] = mapped_column(Integer, default=0)
    orphans_quarantined: Mapped[int] = mapped_column(Integer, default=0)
    # Written every few seconds while the run is alive: another node sharing the index tells a live run from a
    # dead one by it (a run without stop whose heartbeat is older than `runs.STALE_AFTER` is dead).
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class AuditRecord(Base):
    """Who connected, or whom this node connected to, and what came of it: one row per connection."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, index=True)  # connection opened
    ended_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    direction: Mapped[AuditDirection] = mapped_column(_enum(AuditDirection))
    kind: Mapped[AuditKind] = mapped_column(_enum(AuditKind))
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    called_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(64), default="")
    peer_port: Mapped[int] = mapped_column(Integer, default=0)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    tls_peer_subject: Mapped[str] = mapped_column(String(255), default="")
    outcome: Mapped[AuditOutcome] = mapped_column(_enum(AuditOutcome))
    detail: Mapped[str] = mapped_column(Text, default="")
    instances: Mapped[int] = mapped_column(Integer, default=0)
    study_uids: Mapped[list] = mapped_column(JSON, default=list)
