"""Pairing decisions of longitudinal jobs: recorded with their reason, read back by the flow and `status`.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.states import JobState, PairingOutcome
from storage.events import record_event
from storage.schema import Job, Pairing
from storage.types import PairingRecord


def record_pairing(
    session: Session,
    job_id: int,
    outcome: PairingOutcome,
    reason: str,
    baseline_uid: str = "",
    waiting_until: datetime | None = None,
) -> None:
    """Store the decision, move the job on (waiting for its baseline, or to the queue) and leave an event."""
    job = session.get(Job, job_id)
    session.add(Pairing(job_fk=job_id, outcome=outcome, baseline_study_uid=baseline_uid[:64], reason=reason))
    job.state = JobState.WAITING_BASELINE if outcome.waits else JobState.PENDING
    job.waiting_until = waiting_until if outcome.waits else None
    record_event(
        session, "INFO", f"job {job_id} pairing {outcome.value}: {reason}"[:4000], job.study.study_instance_uid
    )


def latest_pairing(session: Session, job_id: int) -> PairingRecord | None:
    row = session.scalar(select(Pairing).where(Pairing.job_fk == job_id).order_by(Pairing.id.desc()).limit(1))
    return PairingRecord(row.outcome, row.baseline_study_uid, row.reason, row.decided_at) if row else None


def awaited_baseline(session: Session, study_uid: str, pipeline: str) -> bool:
    """Whether a waiting follow-up of the pipeline awaits this study as its baseline."""
    waiting = session.scalars(select(Job.id).where(Job.pipeline == pipeline, Job.state == JobState.WAITING_BASELINE))
    return any((p := latest_pairing(session, job_id)) and p.baseline_study_uid == study_uid for job_id in waiting)
