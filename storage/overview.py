"""The study list of the status snapshot: studies with their patient, accession, date, modalities, description,
each pipeline's job, the results and their deliveries, searched, filtered and paged in SQL; and the index facts
the health line is made of (queue depth, failing jobs, dead letters, next attempts, last received).

Every function takes an open session; the caller owns the transaction (`Database.session()`). Nothing here
formats: `immunode.snapshot` assembles the snapshot, the status page and `immunode status` print it.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select
from sqlalchemy.orm import Session

from common.states import JobState, OutputKind
from common.types import parse_dicom_date
from storage.schema import Delivery, DeliveryState, Instance, Job, Output, Patient, Series, Study, StudyState

ACTIVE_JOB_STATES = (JobState.PENDING, JobState.PAIRING, JobState.WAITING_BASELINE, JobState.RUNNING)
QUEUED_JOB_STATES = (JobState.PENDING, JobState.PAIRING, JobState.WAITING_BASELINE)
MAX_PAGE_SIZE = 200


class StudyCondition(enum.Enum):
    """Where a study stands, for people (and the list's state filter)."""

    RECEIVING = "receiving"  # instances arriving; not yet quiet for the stability time
    ANALYSING = "analysing"  # a job queued, pairing, waiting for its baseline or running
    FAILED = "failed"  # a job of the current revision failed, or a result's delivery is dead
    DELIVERING = "delivering"  # results waiting for their next sending attempt
    DONE = "done"  # complete: every job finished, every result sent


@dataclass(frozen=True)
class StudyQuery:
    """Search, filter and page of the study list (newest last instance first)."""

    patient_id: str = ""  # part of the Patient ID, any case
    accession_number: str = ""  # part of the Accession Number, any case
    date_from: date | None = None  # Study Date on or after
    date_to: date | None = None  # Study Date on or before
    condition: StudyCondition | None = None
    page: int = 1
    page_size: int = 25

    def __post_init__(self) -> None:
        if self.page < 1 or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page starts at 1 and holds 1 to {MAX_PAGE_SIZE} studies")


@dataclass(frozen=True)
class JobCell:
    """The newest job of one pipeline for a study (superseded ones left out)."""

    job_id: int
    pipeline: str
    rule: str
    state: JobState
    attempts: int
    summary: str
    error: str  # the failure, or the last failed attempt's reason while it is retried
    waiting_until: datetime | None  # WAITING_BASELINE: runs without its baseline after this
    finished_at: datetime | None


@dataclass(frozen=True)
class ResultCell:
    """A DICOM object a job of the study produced."""

    job_id: int
    kind: OutputKind
    sop_instance_uid: str
    series_instance_uid: str
    created_at: datetime


@dataclass(frozen=True)
class DeliveryCell:
    delivery_id: int
    kind: OutputKind
    sop_instance_uid: str
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None  # PENDING only: when it is tried next
    last_error: str
    sent_at: datetime | None


@dataclass(frozen=True)
class StudyRow:
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    # None unless the caller asked for names (`monitoring.show_patient_names`); never in a repr (a log line).
    patient_name: str | None = field(repr=False)
    accession_number: str
    study_date: date | None
    description: str
    modalities: tuple[str, ...]
    instances: int
    state: StudyState
    revision: int
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    jobs: tuple[JobCell, ...]
    results: tuple[ResultCell, ...]  # of the jobs shown
    earlier_results: int  # objects of earlier jobs of the study (superseded revisions, re-runs)
    deliveries: tuple[DeliveryCell, ...]

    @property
    def condition(self) -> StudyCondition:
        if self.state is StudyState.RECEIVING:
            return StudyCondition.RECEIVING
        if any(j.state in ACTIVE_JOB_STATES for j in self.jobs):
            return StudyCondition.ANALYSING
        if any(j.state is JobState.FAILED for j in self.jobs) or any(
            d.state is DeliveryState.DEAD for d in self.deliveries
        ):
            return StudyCondition.FAILED
        if any(d.state is DeliveryState.PENDING for d in self.deliveries):
            return StudyCondition.DELIVERING
        return StudyCondition.DONE


@dataclass(frozen=True)
class StudyPage:
    query: StudyQuery
    total: int  # studies matching the query, all pages
    rows: tuple[StudyRow, ...]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.page_size))


@dataclass(frozen=True)
class IndexFacts:
    """What the health line reads from the index."""

    studies: int
    receiving: int
    queue_depth: int  # jobs pending, pairing or waiting for a baseline
    running: int
    failed_recently: int  # jobs failed within `recent` of now
    dead_letters: int
    pending_deliveries: int
    next_delivery_at: datetime | None
    last_received_at: datetime | None


# --- conditions in SQL (the state filter) ------------------------------------------------------------------------


def _has_job(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Job.study_fk == Study.id, *conditions)


def _has_delivery(state: DeliveryState) -> ColumnElement[bool]:
    return (
        exists()
        .where(Job.study_fk == Study.id, Output.job_fk == Job.id, Delivery.output_fk == Output.id)
        .where(Delivery.state == state)
    )


def _condition(condition: StudyCondition) -> ColumnElement[bool]:
    complete = Study.state == StudyState.COMPLETE
    active = _has_job(Job.state.in_(ACTIVE_JOB_STATES))
    failed = or_(
        _has_job(Job.state == JobState.FAILED, Job.study_revision == Study.revision),
        _has_delivery(DeliveryState.DEAD),
    )
    pending = _has_delivery(DeliveryState.PENDING)
    return {
        StudyCondition.RECEIVING: Study.state == StudyState.RECEIVING,
        StudyCondition.ANALYSING: and_(complete, active),
        StudyCondition.FAILED: and_(complete, failed),
        StudyCondition.DELIVERING: and_(complete, pending),
        StudyCondition.DONE: and_(complete, not_(active), not_(failed), not_(pending)),
    }[condition]


def _filters(query: StudyQuery) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if query.patient_id.strip():
        found.append(Patient.patient_id.icontains(query.patient_id.strip(), autoescape=True))
    if query.accession_number.strip():
        found.append(Study.accession_number.icontains(query.accession_number.strip(), autoescape=True))
    if query.date_from is not None or query.date_to is not None:
        found.append(Study.study_date != "")
    if query.date_from is not None:
        found.append(Study.study_date >= f"{query.date_from:%Y%m%d}")
    if query.date_to is not None:
        found.append(Study.study_date <= f"{query.date_to:%Y%m%d}")
    if query.condition is not None:
        found.append(_condition(query.condition))
    return found


# --- the list ----------------------------------------------------------------------------------------------------


def study_page(session: Session, query: StudyQuery, with_patient_names: bool = False) -> StudyPage:
    """One page of the studies matching `query`, newest last instance first, with their jobs, results and
    deliveries. Patient names only `with_patient_names`."""
    filters = _filters(query)
    total = session.scalar(select(func.count(Study.id)).join(Patient, Patient.id == Study.patient_fk).where(*filters))
    found = session.execute(
        select(Study, Patient.patient_id, Patient.issuer_of_patient_id)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(*filters)
        .order_by(Study.last_received_at.desc(), Study.id.desc())
        .offset((query.page - 1) * query.page_size)
        .limit(query.page_size)
    ).all()
    ids = [study.id for study, _, _ in found]
    modalities: dict[int, set[str]] = defaultdict(set)
    for study_id, modality in session.execute(
        select(Series.study_fk, Series.modality).where(Series.study_fk.in_(ids)).distinct()
    ):
        modalities[study_id].add(modality)
    instances = dict(
        session.execute(
            select(Series.study_fk, func.count(Instance.id))
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.study_fk.in_(ids))
            .group_by(Series.study_fk)
        ).all()
    )
    jobs, results, earlier = _jobs_and_results(session, ids)
    deliveries = _deliveries(session, ids)
    rows = tuple(
        StudyRow(
            study_instance_uid=study.study_instance_uid,
            patient_id=patient_id,
            issuer_of_patient_id=issuer,
            patient_name=study.patient_name if with_patient_names else None,
            accession_number=study.accession_number,
            study_date=parse_dicom_date(study.study_date),
            description=study.study_description,
            modalities=tuple(sorted(m for m in modalities[study.id] if m)),
            instances=int(instances.get(study.id, 0)),
            state=study.state,
            revision=study.revision,
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            completed_at=study.completed_at,
            jobs=tuple(jobs[study.id]),
            results=tuple(results[study.id]),
            earlier_results=earlier[study.id],
            deliveries=tuple(deliveries[study.id]),
        )
        for study, patient_id, issuer in found
    )
    return StudyPage(query, int(total or 0), rows)


def _jobs_and_results(
    session: Session, study_ids: list[int]
) -> tuple[dict[int, list[JobCell]], dict[int, list[ResultCell]], dict[int, int]]:
    newest: dict[int, dict[str, Job]] = defaultdict(dict)
    for job in session.scalars(
        select(Job).where(Job.study_fk.in_(study_ids), Job.state != JobState.SUPERSEDED).order_by(Job.id)
    ):
        newest[job.study_fk][job.pipeline] = job  # the last one of each pipeline wins
    jobs = defaultdict(list)
    shown: dict[int, int] = {}
    for study_id, by_pipeline in newest.items():
        for pipeline in sorted(by_pipeline):
            job = by_pipeline[pipeline]
            shown[job.id] = study_id
            jobs[study_id].append(
                JobCell(
                    job.id,
                    job.pipeline,
                    job.rule,
                    job.state,
                    job.attempts,
                    job.summary,
                    job.error,
                    job.waiting_until,
                    job.finished_at,
                )
            )
    results = defaultdict(list)
    earlier: dict[int, int] = defaultdict(int)
    rows = session.execute(
        select(Job.study_fk, Output)
        .join(Output, Output.job_fk == Job.id)
        .where(Job.study_fk.in_(study_ids))
        .order_by(Output.id)
    ).all()
    for study_id, output in rows:
        if output.job_fk in shown:
            results[study_id].append(
                ResultCell(
                    output.job_fk,
                    output.kind,
                    output.sop_instance_uid,
                    output.series_instance_uid,
                    output.created_at,
                )
            )
        else:
            earlier[study_id] += 1
    return jobs, results, earlier


def _deliveries(session: Session, study_ids: list[int]) -> dict[int, list[DeliveryCell]]:
    rows = session.execute(
        select(Job.study_fk, Delivery, Output.kind, Output.sop_instance_uid)
        .join(Output, Output.job_fk == Job.id)
        .join(Delivery, Delivery.output_fk == Output.id)
        .where(Job.study_fk.in_(study_ids))
        .order_by(Delivery.id)
    ).all()
    found = defaultdict(list)
    for study_id, delivery, kind, sop_instance_uid in rows:
        found[study_id].append(
            DeliveryCell(
                delivery.id,
                kind,
                sop_instance_uid,
                delivery.destination,
                delivery.state,
                delivery.attempts,
                delivery.next_attempt_at if delivery.state is DeliveryState.PENDING else None,
                delivery.last_error or "",
                delivery.sent_at,
            )
        )
    return found


def index_facts(session: Session, now: datetime, recent: timedelta = timedelta(hours=24)) -> IndexFacts:
    jobs = dict(session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
    deliveries = dict(session.execute(select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state)).all())
    studies = dict(session.execute(select(Study.state, func.count(Study.id)).group_by(Study.state)).all())
    failed_recently = session.scalar(
        select(func.count(Job.id)).where(Job.state == JobState.FAILED, Job.finished_at >= now - recent)
    )
    return IndexFacts(
        studies=sum(studies.values()),
        receiving=studies.get(StudyState.RECEIVING, 0),
        queue_depth=sum(jobs.get(state, 0) for state in QUEUED_JOB_STATES),
        running=jobs.get(JobState.RUNNING, 0),
        failed_recently=int(failed_recently or 0),
        dead_letters=deliveries.get(DeliveryState.DEAD, 0),
        pending_deliveries=deliveries.get(DeliveryState.PENDING, 0),
        next_delivery_at=session.scalar(
            select(func.min(Delivery.next_attempt_at)).where(Delivery.state == DeliveryState.PENDING)
        ),
        last_received_at=session.scalar(select(func.max(Study.last_received_at))),
    )
