"""Jobs: the queue the runner claims from, their states, retries and interruptions.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session, aliased

from common.states import JobState
from storage.errors import ClaimLost
from storage.events import record_event
from storage.pairings import latest_pairing
from storage.schema import Job, Study, utcnow
from storage.types import JobClaim, JobSpec, JobStatus, WaitingJob


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


def return_interrupted_jobs(
    session: Session,
    job_ids: list[int],
    run_id: int | None = None,
    why: str = "interrupted by a stop of the node; resumes at the next start",
) -> list[int]:
    """These running jobs go back to the queue, the attempt not counted (a clean stop interrupted them, or their
    result could not be recorded while the index was away). With `run_id`, only while that run still holds them.
    Returns the jobs returned."""
    statement = select(Job).where(Job.id.in_(job_ids), Job.state == JobState.RUNNING)
    if run_id is not None:
        statement = statement.where(Job.claimed_by == run_id)
    returned = []
    for job in session.scalars(statement.with_for_update()).all():
        job.state = JobState.PENDING
        job.attempts = max(job.attempts - 1, 0)
        job.started_at = None
        job.claimed_by = None
        record_event(session, "INFO", f"job {job.id} {why}", job.study.study_instance_uid)
        returned.append(job.id)
    return returned


def release_untracked_jobs(session: Session, run_id: int, tracked: set[int], max_attempts: int) -> list[int]:
    """Jobs the index says `run_id` is running but that run is not (not in `tracked`: its worker gone without a
    word, its outcome lost): back to the queue, the attempt counted, or failed when attempts are used up. No job
    stays RUNNING without a live holder that actually runs it."""
    statement = select(Job).where(Job.state == JobState.RUNNING, Job.claimed_by == run_id)
    if tracked:
        statement = statement.where(Job.id.not_in(tracked))
    untracked = session.scalars(statement.with_for_update(skip_locked=True)).all()
    requeue_or_fail(untracked, max_attempts, "its node was no longer running it")
    return [job.id for job in untracked]


def job_claim(session: Session, job_id: int) -> JobClaim:
    job = session.get(Job, job_id)
    return JobClaim(job.id, job.claimed_by, job.started_at)


def check_claim(session: Session, claim: JobClaim) -> bool:
    """Before a job's outcome is recorded: True while `claim` still holds the job (locked until the transaction
    ends); False when that claim already finished it (a commit whose answer was lost, retried); ClaimLost when the
    job was taken back or handed on meanwhile."""
    job = session.scalar(select(Job).where(Job.id == claim.job_id).with_for_update())
    if job is None or (job.claimed_by, job.started_at) != (claim.run_id, claim.started_at):
        raise ClaimLost(f"job {claim.job_id} is no longer held by the run that ran it")
    if job.state is JobState.RUNNING:
        return True
    if job.state in (JobState.SUCCEEDED, JobState.FAILED):
        return False
    raise ClaimLost(f"job {claim.job_id} is {job.state.value}, no longer running")


def claim_pending_jobs(session: Session, limit: int, run_id: int | None = None) -> list[JobSpec]:
    """Up to `limit` pending jobs, now RUNNING for `run_id`. Rows another node is claiming are skipped
    (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite serialises writers), so no job is claimed twice. The versions of
    one study's results are written in order: a job waits while one of the same pipeline for the study runs
    (its report supersedes the running one's)."""
    running = aliased(Job)
    busy = exists().where(
        running.study_fk == Job.study_fk, running.pipeline == Job.pipeline, running.state == JobState.RUNNING
    )
    jobs = session.scalars(
        select(Job)
        .where(Job.state == JobState.PENDING, ~busy)
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    specs, claimed = [], set()
    for job in jobs:
        if (job.study_fk, job.pipeline) in claimed:
            continue
        claimed.add((job.study_fk, job.pipeline))
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


def requeue_job_or_fail(
    session: Session, job_id: int, reason: str, max_attempts: int, run_id: int | None = None
) -> JobState:
    """After a worker crash: retry while attempts remain, else fail with the reason. With `run_id`, only while
    that run still holds the job (another node may have taken it back); returns the job's state."""
    job = session.get(Job, job_id, with_for_update=True)
    if run_id is not None and (job.state is not JobState.RUNNING or job.claimed_by != run_id):
        return job.state
    if job.attempts < max_attempts:
        job.state = JobState.PENDING
        job.claimed_by = None
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


def requeue_study(session: Session, study_uid: str, pipeline: str, reason: str) -> int | None:
    """A new job of the pipeline for a study analysed before (same rule, series and revision), first through the
    pairing stage, saying why; None when the study has no job of the pipeline."""
    newest = session.scalar(
        select(Job)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == pipeline, Job.state != JobState.SUPERSEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )
    if newest is None:
        return None
    job = Job(
        study_fk=newest.study_fk,
        pipeline=pipeline,
        rule=newest.rule,
        series_uids=newest.series_uids,
        study_revision=newest.study_revision,
        state=JobState.PAIRING,
        reason=reason,
    )
    session.add(job)
    session.flush()
    record_event(session, "INFO", f"job {job.id} ({pipeline}) queued: {reason}"[:4000], study_uid)
    return job.id


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
