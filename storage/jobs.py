"""Jobs: the queue the runner claims from, their states, retries and interruptions.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.states import JobState
from storage.events import record_event
from storage.pairings import latest_pairing
from storage.schema import Job, Study, utcnow
from storage.types import JobSpec, JobStatus, WaitingJob


def reset_interrupted_jobs(session: Session, max_attempts: int, alive: frozenset[int] = frozenset()) -> int:
    """At start-up: jobs left RUNNING by a stopped node run again, unless they used up their attempts. Jobs
    claimed by a run in `alive` (another node sharing the index) are left to it."""
    running = select(Job).where(Job.state == JobState.RUNNING)
    if alive:
        running = running.where(Job.claimed_by.is_(None) | Job.claimed_by.not_in(alive))
    jobs = session.scalars(running.with_for_update(skip_locked=True)).all()
    requeue_or_fail(jobs, max_attempts, "node stopped or worker killed")
    return len(jobs)


def requeue_or_fail(jobs: Sequence[Job], max_attempts: int, why: str) -> None:
    """Running jobs whose run ended: back to the queue, or failed when they used up their attempts."""
    for job in jobs:
        if job.attempts >= max_attempts:
            job.state = JobState.FAILED
            job.error = f"interrupted {job.attempts} time(s) ({why}); not retried"
            job.finished_at = utcnow()
        else:
            job.state = JobState.PENDING
        job.claimed_by = None


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


def claim_pending_jobs(session: Session, limit: int, run_id: int | None = None) -> list[JobSpec]:
    """Up to `limit` pending jobs, now RUNNING for `run_id`. Rows another node is claiming are skipped
    (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite serialises writers), so no job is claimed twice."""
    jobs = session.scalars(
        select(Job).where(Job.state == JobState.PENDING).order_by(Job.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    specs = []
    for job in jobs:
        job.state = JobState.RUNNING
        job.claimed_by = run_id
        job.attempts += 1
        job.started_at = utcnow()
        specs.append(_spec(job))
    return specs


def _spec(job: Job) -> JobSpec:
    return JobSpec(
        job.id,
        job.pipeline,
        job.study.study_instance_uid,
        job.study_revision,
        job.created_at,
        tuple(job.series_uids.split()),
        job.rule,
    )


def job_spec(session: Session, job_id: int) -> JobSpec:
    return _spec(session.get(Job, job_id))


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


def requeue_failed_jobs(session: Session, job_ids: list[int]) -> int:
    statement = (
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.FAILED)
        .values(state=JobState.PENDING, attempts=0, error="")
    )
    return session.execute(statement).rowcount or 0


def jobs_in_state(session: Session, state: JobState) -> list[WaitingJob]:
    rows = session.execute(
        select(Job.id, Job.pipeline, Study.study_instance_uid, Job.waiting_until)
        .join(Study, Study.id == Job.study_fk)
        .where(Job.state == state)
        .order_by(Job.id)
    ).all()
    return [WaitingJob(*row) for row in rows]


def lease_jobs_in_state(session: Session, state: JobState, run_id: int | None, lease: timedelta) -> list[WaitingJob]:
    """`jobs_in_state`, leased to `run_id` for `lease` (pairing talks to the network): jobs leased to another
    live node are left to it, so two nodes never pair (and retrieve for) one job at the same time."""
    if run_id is None:
        return jobs_in_state(session, state)
    now = utcnow()
    jobs = session.scalars(
        select(Job)
        .where(
            Job.state == state,
            Job.lease_until.is_(None) | (Job.lease_until < now) | (Job.claimed_by == run_id),
        )
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        job.claimed_by, job.lease_until = run_id, now + lease
    return [WaitingJob(job.id, job.pipeline, job.study.study_instance_uid, job.waiting_until) for job in jobs]


def study_job_state(session: Session, study_uid: str, pipeline: str) -> JobState | None:
    """State of the newest job of a pipeline for a study (None: the study has none)."""
    return session.scalar(
        select(Job.state)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == pipeline, Job.state != JobState.SUPERSEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )


def job_counts(session: Session) -> dict[JobState, int]:
    return {state: count for state, count in session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state))}


def recent_jobs(session: Session, limit: int) -> list[JobStatus]:
    """The newest jobs with their failure reason and latest pairing decision, for `immunode status`."""
    return [
        JobStatus(
            job.id,
            job.pipeline,
            job.state,
            job.study.study_instance_uid,
            job.error,
            job.waiting_until,
            latest_pairing(session, job.id),
            job.summary,
        )
        for job in session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all()
    ]


def job_counts_by_pipeline(session: Session) -> dict[tuple[str, JobState], int]:
    rows = session.execute(select(Job.pipeline, Job.state, func.count(Job.id)).group_by(Job.pipeline, Job.state))
    return {(pipeline, state): count for pipeline, state, count in rows}


def finished_job_seconds(session: Session, limit: int = 10_000) -> list[tuple[str, float]]:
    """(pipeline, run time in seconds) of the most recent finished jobs."""
    rows = session.execute(
        select(Job.pipeline, Job.started_at, Job.finished_at)
        .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
        .order_by(Job.id.desc())
        .limit(limit)
    ).all()
    return [(pipeline, max((end - start).total_seconds(), 0.0)) for pipeline, start, end in rows]
