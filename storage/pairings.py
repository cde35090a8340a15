"""Pairing decisions of longitudinal jobs: recorded with their reason, read back by the flow and `status`.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.states import JobState, PairingOutcome
from common.types import EarlierFollowUp, StudyFacts, parse_dicom_date
from storage.events import record_event
from storage.schema import Job, Pairing, Patient, Study
from storage.types import PairingRecord

# Outcomes that make a study a follow-up of its baseline.
PAIRED_OR_AWAITED = (PairingOutcome.PAIRED, PairingOutcome.WAITING, PairingOutcome.RETRIEVING)


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


def earlier_follow_ups(session: Session, facts: StudyFacts, pipeline: str) -> list[EarlierFollowUp]:
    """The patient's other studies whose job of the pipeline was paired with (or awaits) a baseline."""
    rows = session.execute(
        select(Study.study_instance_uid, Study.study_date, Job.id)
        .join(Job, Job.study_fk == Study.id)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(
            Patient.patient_id == facts.patient_id,
            Patient.issuer_of_patient_id == facts.issuer_of_patient_id,
            Study.study_instance_uid != facts.study_instance_uid,
            Job.pipeline == pipeline,
            Job.state.not_in((JobState.SUPERSEDED, JobState.FAILED)),
        )
    ).all()
    found = []
    for study_uid, study_date, job_id in rows:
        pairing = latest_pairing(session, job_id)
        if pairing is not None and pairing.baseline_study_uid and pairing.outcome in PAIRED_OR_AWAITED:
            found.append(EarlierFollowUp(study_uid, parse_dicom_date(study_date), pairing.baseline_study_uid))
    return found


def study_pairing(session: Session, study_uid: str, pipeline: str) -> PairingRecord | None:
    """The latest pairing decision of the study's newest job of the pipeline (superseded jobs left out)."""
    job_id = session.scalar(
        select(Job.id)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == pipeline, Job.state != JobState.SUPERSEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )
    return latest_pairing(session, job_id) if job_id is not None else None
