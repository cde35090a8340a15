"""Studies and their series: completion (quiet studies, routed into jobs), what a study holds as a job reads
it, and the facts the pairing stage decides on.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.states import JobState
from common.types import ANNOTATION_SOP_CLASSES, SeriesFiles, StoredFile, StudyFacts, parse_dicom_date
from storage.events import record_event
from storage.files import FileLayout
from storage.schema import Instance, Job, Output, Patient, Series, Study, StudyState, utcnow
from storage.types import (
    ArrivalKind,
    ArrivedSeries,
    CompletedStudy,
    NewJob,
    PatientSeries,
    SeriesSummary,
)


def _arrived(session: Session, study: Study) -> tuple[ArrivedSeries, ...]:
    """What a re-opened study received since its previous completion, by series."""
    if study.completed_at is None:
        return ()
    rows = session.execute(
        select(
            Series.series_instance_uid,
            Series.modality,
            Instance.sop_class_uid,
            Instance.calling_ae_title,
            Instance.received_at,
            Instance.sop_instance_uid.in_(select(Output.sop_instance_uid)),
        )
        .join(Instance, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id, Instance.received_at > study.completed_at)
        .order_by(Instance.received_at)
    ).all()
    grouped: dict[str, list] = defaultdict(list)
    for row in rows:
        grouped[row[0]].append(row)
    return tuple(
        ArrivedSeries(
            uid,
            found[0][1],
            len(found),
            tuple(sorted({r[3] for r in found})),
            found[0][4],
            all(r[2] in ANNOTATION_SOP_CLASSES for r in found),
            all(r[5] for r in found),
        )
        for uid, found in grouped.items()
    )


def _quiet_after(arrival: ArrivalKind, stable_for: timedelta, annotations_for: timedelta | None) -> timedelta:
    """How long a study must be quiet: annotations (or our own results) after an analysis go fast."""
    if annotations_for is not None and arrival in (ArrivalKind.ANNOTATIONS, ArrivalKind.OWN_RESULTS):
        return min(annotations_for, stable_for)
    return stable_for


def _receiving(session: Session, received_before: datetime | None = None) -> list[Study]:
    statement = select(Study).where(Study.state == StudyState.RECEIVING).order_by(Study.id)
    if received_before is not None:
        statement = statement.where(Study.last_received_at <= received_before)
    return list(session.scalars(statement).all())


def next_quiet_due(
    session: Session,
    stable_for: timedelta,
    annotations_for: timedelta | None = None,
    sending: frozenset[str] = frozenset(),
) -> datetime | None:
    """When the next study still receiving becomes quiet (its last instance + its quiet time), if any; studies an
    association is still `sending` are left out (their sender's end starts the route stage)."""
    due = []
    for study in _receiving(session):
        if study.study_instance_uid in sending:
            continue
        arrival = CompletedStudy(study.study_instance_uid, study.revision, (), _arrived(session, study)).arrival
        due.append(study.last_received_at + _quiet_after(arrival, stable_for, annotations_for))
    return min(due, default=None)


def quiet_studies(
    session: Session,
    stable_for: timedelta,
    annotations_for: timedelta | None = None,
    sending: frozenset[str] = frozenset(),
) -> list[CompletedStudy]:
    """Studies still receiving whose last instance arrived at least `stable_for` ago (`annotations_for` when a
    study analysed before received only readers' annotations since), with what arrived since the previous
    completion. A study an open association is still `sending` is not quiet, however long its last instance
    took."""
    now = utcnow()
    shortest = min(stable_for, annotations_for) if annotations_for is not None else stable_for
    completed = []
    for study in _receiving(session, now - shortest):
        if study.study_instance_uid in sending:
            continue
        arrived = _arrived(session, study)
        arrival = CompletedStudy(study.study_instance_uid, study.revision, (), arrived).arrival
        if study.last_received_at > now - _quiet_after(arrival, stable_for, annotations_for):
            continue
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
        completed.append(CompletedStudy(study.study_instance_uid, study.revision, series, arrived))
    return completed


def complete_study(
    session: Session, completed: CompletedStudy, jobs: Sequence[NewJob], note: str = ""
) -> list[int]:
    """Mark the study complete at the revision seen and queue the jobs routing asked for (`note`: why none)."""
    # Locked: another node routing the same quiet study waits here, then finds it complete.
    study = session.scalar(
        select(Study).where(Study.study_instance_uid == completed.study_instance_uid).with_for_update()
    )
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
    for new in jobs:
        job = Job(
            study_fk=study.id,
            pipeline=new.pipeline,
            rule=new.rule,
            series_uids=" ".join(new.series_instance_uids),
            study_revision=study.revision,
            state=new.state,
            reason=new.reason,
        )
        session.add(job)
        session.flush()
        job_ids.append(job.id)
    if jobs:
        names = ", ".join(f"{j.rule}->{j.pipeline}" for j in jobs)
        message = f"study complete (revision {study.revision}); queued {names}"
    else:
        message = f"study complete (revision {study.revision}); {note or 'no routing rule matched'}"
    record_event(session, "INFO", message, study.study_instance_uid)
    return job_ids


def study_series(session: Session, layout: FileLayout, study_instance_uid: str) -> tuple[SeriesFiles, ...]:
    """Every series received for the study with its files in arrival order, leaving out objects this node
    produced itself (a PACS may send our SEG and SR back)."""
    rows = session.execute(
        select(
            Series.series_instance_uid,
            Series.modality,
            Series.frame_of_reference_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.path,
        )
        .join(Instance, Instance.series_fk == Series.id)
        .join(Study, Study.id == Series.study_fk)
        .where(
            Study.study_instance_uid == study_instance_uid,
            Instance.sop_instance_uid.not_in(select(Output.sop_instance_uid)),
        )
        .order_by(Instance.id)
    ).all()
    files: dict[tuple[str, str, str], list[StoredFile]] = defaultdict(list)
    for series_uid, modality, frame_of_reference_uid, sop_uid, sop_class_uid, path in rows:
        files[(series_uid, modality, frame_of_reference_uid)].append(
            StoredFile(sop_uid, sop_class_uid, layout.absolute(path))
        )
    return tuple(SeriesFiles(uid, modality, frame, tuple(found)) for (uid, modality, frame), found in files.items())


def latest_series_by_patient(session: Session, layout: FileLayout, modality: str) -> list[PatientSeries]:
    """Each patient's most recent stored series of `modality` (latest study date, then latest received)."""
    rows = session.execute(
        select(Patient.patient_id, Patient.issuer_of_patient_id, Study.study_instance_uid, Study.study_date)
        .join(Study, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .where(Series.modality == modality)
        .group_by(Patient.patient_id, Patient.issuer_of_patient_id, Study.study_instance_uid, Study.study_date)
        .order_by(Study.study_date, Study.study_instance_uid)
    ).all()
    latest: dict[tuple[str, str], PatientSeries] = {}
    for patient_id, issuer, study_uid, study_date in rows:
        for series in study_series(session, layout, study_uid):
            if series.modality == modality:
                latest[(patient_id, issuer)] = PatientSeries(patient_id, issuer, study_uid, study_date or "", series)
    return list(latest.values())


def series_paths(session: Session, layout: FileLayout, series_instance_uid: str) -> list[Path]:
    """The files of one stored series (`immunode train cytact` names lesions by series)."""
    rows = session.scalars(
        select(Instance.path)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.series_instance_uid == series_instance_uid)
        .order_by(Instance.id)
    ).all()
    return [layout.absolute(path) for path in rows]


def _facts(study: Study) -> StudyFacts:
    return StudyFacts(
        study.study_instance_uid,
        study.patient.patient_id,
        study.patient.issuer_of_patient_id,
        parse_dicom_date(study.study_date),
        frozenset(s.modality for s in study.series),
    )


def study_facts(session: Session, study_uid: str) -> StudyFacts | None:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    return _facts(study) if study else None


def candidate_studies(session: Session, facts: StudyFacts) -> list[StudyFacts]:
    """Stored studies with the same PatientID, whatever the issuer: the pairing rules judge (and log) them."""
    studies = session.scalars(
        select(Study).join(Patient, Patient.id == Study.patient_fk).where(Patient.patient_id == facts.patient_id)
    ).all()
    return [_facts(s) for s in studies if s.study_instance_uid != facts.study_instance_uid]


def arriving_before(session: Session, facts: StudyFacts) -> list[str]:
    """The patient's studies dated before this one that are still arriving (not yet quiet and routed)."""
    if facts.study_date is None:
        return []
    rows = session.execute(
        select(Study.study_instance_uid, Study.study_date)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(
            Patient.patient_id == facts.patient_id,
            Patient.issuer_of_patient_id == facts.issuer_of_patient_id,
            Study.state == StudyState.RECEIVING,
            Study.study_instance_uid != facts.study_instance_uid,
        )
    ).all()
    return [uid for uid, when in rows if (day := parse_dicom_date(when)) is not None and day < facts.study_date]


def completed_study_count(session: Session) -> int:
    return int(session.scalar(select(func.count(Study.id)).where(Study.completed_at.is_not(None))) or 0)
