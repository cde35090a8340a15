"""Queries and state changes of the index used by routing, jobs, reports, dispatch and the CLI.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pipelines.types import (
    CompletedStudy,
    DueDelivery,
    JobSpec,
    PetQuantResult,
    ReportFile,
    RouteDecision,
    SeriesSummary,
)
from storage.files import FileLayout
from storage.schema import (
    Delivery,
    DeliveryState,
    Event,
    Instance,
    Job,
    JobState,
    LesionResult,
    Output,
    OutputKind,
    Patient,
    Series,
    Study,
    StudyState,
    utcnow,
)
from storage.store import record_event

# --- route -------------------------------------------------------------------------------------------------


def next_quiet_due(session: Session, stable_for: timedelta) -> datetime | None:
    """When the next study still receiving becomes quiet (its last instance + the stability time), if any."""
    last = session.scalar(select(func.min(Study.last_received_at)).where(Study.state == StudyState.RECEIVING))
    return None if last is None else last + stable_for


def quiet_studies(session: Session, stable_for: timedelta) -> list[CompletedStudy]:
    """Studies still receiving whose last instance arrived at least `stable_for` ago."""
    cutoff = utcnow() - stable_for
    studies = session.scalars(
        select(Study).where(Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff)
    ).all()
    completed = []
    for study in studies:
        counts = dict(
            session.execute(
                select(Instance.series_fk, func.count(Instance.id))
                .join(Series, Series.id == Instance.series_fk)
                .where(Series.study_fk == study.id)
                .group_by(Instance.series_fk)
            ).all()
        )
        series = tuple(
            SeriesSummary(
                s.series_instance_uid,
                s.modality,
                s.series_description,
                s.manufacturer,
                s.frame_of_reference_uid,
                int(counts.get(s.id, 0)),
            )
            for s in study.series
        )
        completed.append(CompletedStudy(study.study_instance_uid, study.revision, series))
    return completed


def complete_study(session: Session, completed: CompletedStudy, decisions: tuple[RouteDecision, ...]) -> list[int]:
    """Mark the study complete at the revision seen and queue one job per routing decision."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == completed.study_instance_uid))
    if study is None or study.revision != completed.revision or study.state is not StudyState.RECEIVING:
        return []  # re-opened meanwhile: the next poll sees the new revision
    study.state = StudyState.COMPLETE
    study.completed_at = utcnow()
    waiting = (JobState.PENDING, JobState.PAIRING, JobState.WAITING_BASELINE)
    superseded = session.scalars(select(Job).where(Job.study_fk == study.id, Job.state.in_(waiting))).all()
    for job in superseded:
        job.state = JobState.SUPERSEDED
        job.error = f"superseded by revision {study.revision}"
    job_ids = []
    for decision in decisions:
        job = Job(
            study_fk=study.id,
            pipeline=decision.pipeline,
            rule=decision.rule,
            series_uids=" ".join(decision.series_instance_uids),
            study_revision=study.revision,
            # Longitudinal jobs first go through the pairing stage (baseline search, retrieval, waiting).
            state=JobState.PAIRING if decision.pipeline == "ct_radiomics" else JobState.PENDING,
        )
        session.add(job)
        session.flush()
        job_ids.append(job.id)
    if decisions:
        names = ", ".join(f"{d.rule}->{d.pipeline}" for d in decisions)
        record_event(
            session, "INFO", f"study complete (revision {study.revision}); queued {names}", study.study_instance_uid
        )
    else:
        record_event(
            session,
            "INFO",
            f"study complete (revision {study.revision}); no routing rule matched",
            study.study_instance_uid,
        )
    return job_ids


# --- jobs --------------------------------------------------------------------------------------------------


def reset_interrupted_jobs(session: Session, max_attempts: int) -> int:
    """At start-up: jobs left RUNNING by a stopped node run again, unless they used up their attempts."""
    jobs = session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
    for job in jobs:
        if job.attempts >= max_attempts:
            job.state = JobState.FAILED
            job.error = f"interrupted {job.attempts} time(s) (node stopped or worker killed); not retried"
            job.finished_at = utcnow()
        else:
            job.state = JobState.PENDING
    return len(jobs)


def return_interrupted_jobs(session: Session, job_ids: list[int]) -> None:
    """A clean stop interrupted these running jobs: back to the queue, the attempt not counted."""
    for job in session.scalars(select(Job).where(Job.id.in_(job_ids), Job.state == JobState.RUNNING)).all():
        job.state = JobState.PENDING
        job.attempts = max(job.attempts - 1, 0)
        job.started_at = None
        record_event(
            session,
            "INFO",
            f"job {job.id} interrupted by a stop of the node; resumes at the next start",
            job.study.study_instance_uid,
        )


def claim_pending_jobs(session: Session, limit: int) -> list[JobSpec]:
    jobs = session.scalars(select(Job).where(Job.state == JobState.PENDING).order_by(Job.id).limit(limit)).all()
    specs = []
    for job in jobs:
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = utcnow()
        specs.append(JobSpec(job.id, job.pipeline, job.study.study_instance_uid, job.study_revision, job.created_at))
    return specs


def job_series_paths(session: Session, layout: FileLayout, job_id: int) -> dict[str, list[Path]]:
    job = session.get(Job, job_id)
    wanted = job.series_uids.split()
    rows = session.execute(
        select(Series.series_instance_uid, Instance.path)
        .join(Instance, Instance.series_fk == Series.id)
        .where(Series.study_fk == job.study_fk, Series.series_instance_uid.in_(wanted))
        .order_by(Instance.id)
    ).all()
    paths: dict[str, list[Path]] = defaultdict(list)
    for series_uid, path in rows:
        paths[series_uid].append(layout.absolute(path))
    return dict(paths)


def study_instances(
    session: Session, layout: FileLayout, job_id: int, sop_classes: set[str] | None = None
) -> dict[str, Path]:
    """SOP Instance UID → file of the job's study's received instances (optionally of some SOP classes),
    leaving out objects this node produced itself (a PACS may send our SEG and SR back)."""
    job = session.get(Job, job_id)
    statement = (
        select(Instance.sop_instance_uid, Instance.path)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == job.study_fk, Instance.sop_instance_uid.not_in(select(Output.sop_instance_uid)))
    )
    if sop_classes is not None:
        statement = statement.where(Instance.sop_class_uid.in_(sop_classes))
    return {uid: layout.absolute(path) for uid, path in session.execute(statement).all()}


def study_ct_paths(session: Session, layout: FileLayout, job_id: int, pet_series_uid: str) -> list[Path]:
    """The largest CT series of the job's study in the PET series' frame of reference (for anatomy)."""
    job = session.get(Job, job_id)
    frame_of_reference_uid = session.scalar(
        select(Series.frame_of_reference_uid).where(Series.series_instance_uid == pet_series_uid)
    )
    if not frame_of_reference_uid:
        return []
    rows = session.execute(
        select(Series.series_instance_uid, Instance.path)
        .join(Instance, Instance.series_fk == Series.id)
        .where(
            Series.study_fk == job.study_fk,
            Series.modality == "CT",
            Series.frame_of_reference_uid == frame_of_reference_uid,
        )
    ).all()
    by_series: dict[str, list[Path]] = defaultdict(list)
    for series_uid, path in rows:
        by_series[series_uid].append(layout.absolute(path))
    return max(by_series.values(), key=len) if by_series else []


def series_paths(session: Session, layout: FileLayout, series_instance_uid: str) -> list[Path]:
    rows = session.scalars(
        select(Instance.path)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.series_instance_uid == series_instance_uid)
    ).all()
    return [layout.absolute(path) for path in rows]


def previous_report_path(
    session: Session, layout: FileLayout, study_uid: str, source_series_uid: str, job_id: int
) -> tuple[int, Path] | None:
    """The newest SR an earlier job produced for the same study and source series, to be superseded."""
    row = session.execute(
        select(Output.id, Output.path)
        .join(Job, Job.id == Output.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .where(
            Study.study_instance_uid == study_uid,
            Output.kind == OutputKind.SR,
            Output.source_series_uid == source_series_uid,
            Job.id != job_id,
        )
        .order_by(Output.id.desc())
        .limit(1)
    ).first()
    return (row[0], layout.absolute(row[1])) if row else None


def record_outputs(
    session: Session,
    layout: FileLayout,
    job_id: int,
    files: list[tuple[ReportFile, str, int | None]],
    destinations: list[str],
) -> None:
    """Index produced files (with their source series and the SR they supersede) and queue deliveries."""
    for report_file, source_series_uid, supersedes in files:
        output = Output(
            job_fk=job_id,
            kind=OutputKind(report_file.kind),
            sop_class_uid=report_file.sop_class_uid,
            sop_instance_uid=report_file.sop_instance_uid,
            source_series_uid=source_series_uid,
            series_instance_uid=report_file.series_instance_uid,
            path=layout.relative(report_file.path),
            sha256=hashlib.sha256(report_file.path.read_bytes()).hexdigest(),
            supersedes_fk=supersedes,
        )
        session.add(output)
        session.flush()
        for name in destinations:
            session.add(Delivery(output_fk=output.id, destination=name))


def record_lesion_results(session: Session, job_id: int, result: PetQuantResult) -> None:
    model = result.cytact.model if result.cytact else None
    for lesion in result.lesions:
        m = lesion.measurements
        session.add(
            LesionResult(
                job_fk=job_id,
                series_instance_uid=result.volume.series_instance_uid,
                lesion_number=lesion.number,
                tracking_uid=lesion.tracking_uid,
                suv_max=m.suv_max,
                suv_mean=m.suv_mean,
                suv_peak=m.suv_peak,
                metabolic_volume_ml=m.metabolic_volume_ml,
                total_lesion_glycolysis=m.total_lesion_glycolysis,
                long_axis_mm=m.long_axis_mm,
                short_axis_mm=m.short_axis_mm,
                recist_target=m.recist_target,
                cytact=lesion.cytact,
                cytact_model=model.key if model else "",
                embedding=list(lesion.embedding) if lesion.embedding is not None else None,
            )
        )


def latest_lesion_cytact_by_patient(session: Session) -> dict[tuple[str, str], list[float]]:
    """(PatientID, IssuerOfPatientID) → lesion CytAct of that patient's most recent successful analysis."""
    latest_job = (
        select(Patient.patient_id, Patient.issuer_of_patient_id, func.max(Job.id).label("job_id"))
        .join(Study, Study.patient_fk == Patient.id)
        .join(Job, Job.study_fk == Study.id)
        .join(LesionResult, LesionResult.job_fk == Job.id)
        .where(Job.state == JobState.SUCCEEDED, LesionResult.cytact.is_not(None))
        .group_by(Patient.patient_id, Patient.issuer_of_patient_id)
        .subquery()
    )
    rows = session.execute(
        select(latest_job.c.patient_id, latest_job.c.issuer_of_patient_id, LesionResult.cytact)
        .join(LesionResult, LesionResult.job_fk == latest_job.c.job_id)
        .where(LesionResult.cytact.is_not(None))
    ).all()
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for patient_id, issuer, cytact in rows:
        scores[(patient_id, issuer)].append(float(cytact))
    return dict(scores)


def finish_job(session: Session, job_id: int, state: JobState, detail: str) -> None:
    job = session.get(Job, job_id)
    job.state = state
    job.finished_at = utcnow()
    if state is JobState.SUCCEEDED:
        job.summary = detail
    else:
        job.error = detail
    level = "INFO" if state is JobState.SUCCEEDED else "ERROR"
    record_event(
        session, level, f"job {job_id} ({job.pipeline}) {state.value}: {detail[:2000]}", job.study.study_instance_uid
    )


def requeue_job_or_fail(session: Session, job_id: int, reason: str, max_attempts: int) -> JobState:
    """After a worker crash: retry while attempts remain, else fail with the reason."""
    job = session.get(Job, job_id)
    if job.attempts < max_attempts:
        job.state = JobState.PENDING
        job.error = f"attempt {job.attempts} failed: {reason}"
        record_event(
            session,
            "WARNING",
            f"job {job_id} attempt {job.attempts} failed: {reason}; retrying",
            job.study.study_instance_uid,
        )
        return JobState.PENDING
    finish_job(session, job_id, JobState.FAILED, reason)
    return JobState.FAILED


# --- dispatch ----------------------------------------------------------------------------------------------


def due_deliveries(session: Session, layout: FileLayout, now: datetime) -> dict[str, list[DueDelivery]]:
    rows = session.execute(
        select(
            Delivery.id, Delivery.destination, Output.path, Output.sop_instance_uid, Delivery.attempts, Output.sha256
        )
        .join(Output, Output.id == Delivery.output_fk)
        .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.id)
    ).all()
    batches: dict[str, list[DueDelivery]] = defaultdict(list)
    for delivery_id, destination, path, uid, attempts, digest in rows:
        batches[destination].append(DueDelivery(delivery_id, destination, layout.absolute(path), uid, attempts, digest))
    return dict(batches)


def record_delivery_attempt(
    session: Session, delivery_id: int, ok: bool, detail: str, max_attempts: int, next_attempt_at: datetime
) -> DeliveryState:
    delivery = session.get(Delivery, delivery_id)
    delivery.attempts += 1
    if ok:
        delivery.state = DeliveryState.SENT
        delivery.sent_at = utcnow()
        delivery.last_error = ""
    elif delivery.attempts >= max_attempts:
        delivery.state = DeliveryState.DEAD
        delivery.last_error = detail
        study_uid = delivery.output.job.study.study_instance_uid
        record_event(
            session,
            "ERROR",
            f"delivery {delivery_id} of {delivery.output.sop_instance_uid} to "
            f"{delivery.destination} dead after {delivery.attempts} attempts: {detail}",
            study_uid,
        )
    else:
        delivery.next_attempt_at = next_attempt_at
        delivery.last_error = detail
    return delivery.state


def requeue_dead_deliveries(session: Session, delivery_ids: list[int] | None) -> int:
    """`immunode retry`: dead (or, by id, any unsent) deliveries go back to the queue with fresh attempts."""
    statement = update(Delivery).values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=utcnow())
    if delivery_ids:
        statement = statement.where(Delivery.id.in_(delivery_ids), Delivery.state != DeliveryState.SENT)
    else:
        statement = statement.where(Delivery.state == DeliveryState.DEAD)
    return session.execute(statement).rowcount or 0


def requeue_failed_jobs(session: Session, job_ids: list[int]) -> int:
    statement = (
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.FAILED)
        .values(state=JobState.PENDING, attempts=0, error="")
    )
    return session.execute(statement).rowcount or 0


# --- status ------------------------------------------------------------------------------------------------


def recent_events(session: Session, limit: int, levels: tuple[str, ...] = ("WARNING", "ERROR")) -> list[Event]:
    return list(
        session.scalars(select(Event).where(Event.level.in_(levels)).order_by(Event.id.desc()).limit(limit)).all()
    )
