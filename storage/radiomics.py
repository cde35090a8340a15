"""Index queries and records of the CT radiomics pipeline: job inputs, pairing decisions, features per study
and volume, CT lesions with their tracking identity, patient-level assessments, and the research table.

Every function takes an open session; the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipelines.pairing import parse_study_date
from pipelines.types import Baseline, BaselineLesion, CtRadiomicsResult, LesionRole, StudyFacts
from storage.files import FileLayout
from storage.schema import (
    ClinicalRecord,
    CtAssessment,
    CtLesionResult,
    Instance,
    Job,
    JobState,
    Output,
    OutputKind,
    Pairing,
    PairingOutcome,
    Patient,
    RadiomicFeature,
    RadiomicsExtraction,
    Series,
    Study,
)
from storage.store import record_event

PIPELINE = "ct_radiomics"


def _series_paths(session: Session, layout: FileLayout, study_fk: int, modality: str) -> dict[str, list[Path]]:
    rows = session.execute(
        select(Series.series_instance_uid, Instance.path)
        .join(Instance, Instance.series_fk == Series.id)
        .where(Series.study_fk == study_fk, Series.modality == modality)
        .order_by(Instance.id)
    ).all()
    paths: dict[str, list[Path]] = defaultdict(list)
    for series_uid, path in rows:
        paths[series_uid].append(layout.absolute(path))
    return dict(paths)


def ct_job_inputs(session: Session, layout: FileLayout, job_id: int) -> tuple[list[Path], list[Path]]:
    """(CT paths of the largest CT series the job selected, PET paths of the study's largest PET series)."""
    job = session.get(Job, job_id)
    selected = set(job.series_uids.split())
    cts = {uid: p for uid, p in _series_paths(session, layout, job.study_fk, "CT").items() if uid in selected}
    pets = _series_paths(session, layout, job.study_fk, "PT")
    return (max(cts.values(), key=len) if cts else []), (max(pets.values(), key=len) if pets else [])


# --- pairing ---------------------------------------------------------------------------------------------------


def _facts(study: Study) -> StudyFacts:
    has_ct = any(s.modality == "CT" for s in study.series)
    return StudyFacts(
        study.study_instance_uid,
        study.patient.patient_id,
        study.patient.issuer_of_patient_id,
        parse_study_date(study.study_date),
        has_ct,
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


def therapy_start(session: Session, facts: StudyFacts):  # noqa: ANN201 - date | None
    return session.scalar(
        select(ClinicalRecord.therapy_start)
        .join(Patient, Patient.id == ClinicalRecord.patient_fk)
        .where(Patient.patient_id == facts.patient_id, Patient.issuer_of_patient_id == facts.issuer_of_patient_id)
    )


def jobs_in_state(session: Session, state: JobState) -> list[tuple[int, str, datetime | None]]:
    rows = session.execute(
        select(Job.id, Study.study_instance_uid, Job.waiting_until)
        .join(Study, Study.id == Job.study_fk)
        .where(Job.pipeline == PIPELINE, Job.state == state)
        .order_by(Job.id)
    ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def record_pairing(
    session: Session,
    job_id: int,
    outcome: PairingOutcome,
    reason: str,
    baseline_uid: str = "",
    next_state: JobState = JobState.PENDING,
    waiting_until: datetime | None = None,
) -> None:
    """Store the decision, move the job on and leave an event for `immunode status`."""
    job = session.get(Job, job_id)
    session.add(Pairing(job_fk=job_id, outcome=outcome, baseline_study_uid=baseline_uid[:64], reason=reason))
    job.state = next_state
    job.waiting_until = waiting_until
    record_event(
        session, "INFO", f"job {job_id} pairing {outcome.value}: {reason}"[:4000], job.study.study_instance_uid
    )


def latest_pairing(session: Session, job_id: int) -> Pairing | None:
    return session.scalar(select(Pairing).where(Pairing.job_fk == job_id).order_by(Pairing.id.desc()).limit(1))


def awaited_baseline(session: Session, study_uid: str) -> bool:
    """Whether a waiting follow-up awaits this study as its baseline."""
    waiting = session.scalars(select(Job.id).where(Job.pipeline == PIPELINE, Job.state == JobState.WAITING_BASELINE))
    return any((p := latest_pairing(session, job_id)) and p.baseline_study_uid == study_uid for job_id in waiting)


def study_ct_job_state(session: Session, study_uid: str) -> JobState | None:
    """State of the newest CT radiomics job of a study (None: the study has none)."""
    return session.scalar(
        select(Job.state)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == PIPELINE, Job.state != JobState.SUPERSEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )


# --- results ---------------------------------------------------------------------------------------------------


def record_ct_result(session: Session, job_id: int, result: CtRadiomicsResult) -> None:
    job = session.get(Job, job_id)
    digest = hashlib.sha256(result.parameters.encode()).hexdigest()
    for feature_set in result.features:
        extraction = RadiomicsExtraction(
            job_fk=job_id,
            study_fk=job.study_fk,
            ct_series_uid=result.ct_series_uid,
            volume=feature_set.volume,
            tracking_uid=feature_set.tracking_uid,
            voxel_count=feature_set.voxel_count,
            seconds=feature_set.seconds,
            pyradiomics_version=result.pyradiomics_version,
            parameters=result.parameters,
            parameters_sha256=digest,
        )
        session.add(extraction)
        session.flush()
        session.add_all(
            RadiomicFeature(extraction_fk=extraction.id, name=name, value=value)
            for name, value in feature_set.features.items()
        )
    status = {c.tracking_uid: c for c in result.changes}
    for lesion in result.lesions:
        change = status.get(lesion.tracking_uid)
        session.add(
            CtLesionResult(
                job_fk=job_id,
                lesion_number=lesion.number,
                tracking_uid=lesion.tracking_uid,
                tracking_identifier=lesion.tracking_identifier,
                role=lesion.role.value,
                source=lesion.source,
                label=lesion.label,
                lymph_node=lesion.lymph_node,
                volume_ml=lesion.volume_ml,
                long_axis_mm=lesion.long_axis_mm,
                short_axis_mm=lesion.short_axis_mm,
                centroid=list(lesion.centroid_mm),
                status=change.status if change else "baseline",
                progressive=bool(change and change.progressive),
            )
        )
    recist = result.recist
    session.add(
        CtAssessment(
            job_fk=job_id,
            time_point=result.time_point,
            baseline_study_uid=result.baseline.study_instance_uid if result.baseline else "",
            sum_diameters_t0_mm=recist.sum_t0_mm if recist else None,
            sum_diameters_t1_mm=recist.sum_t1_mm if recist else None,
            percent_change=recist.percent_change if recist else None,
            recist_category=recist.category if recist else "",
            new_lesions=recist.new_lesions if recist else None,
            progressive_lesions=recist.progressive_lesions if recist else None,
            pattern=recist.pattern if recist else "",
            deltas=dict(result.deltas) if result.deltas else None,
            signature_class=result.signature_class.label if result.signature_class else "",
            signature_probability=result.signature_class.probability_systemic if result.signature_class else None,
        )
    )


def load_baseline(session: Session, layout: FileLayout, study_uid: str) -> Baseline | None:
    """The baseline as its newest successful CT radiomics job left it; None when it has none."""
    job = session.scalar(
        select(Job)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == PIPELINE, Job.state == JobState.SUCCEEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )
    if job is None:
        return None
    extractions = session.scalars(select(RadiomicsExtraction).where(RadiomicsExtraction.job_fk == job.id)).all()
    features: dict[str, dict[str, float]] = {}
    for extraction in extractions:
        if extraction.volume in ("P", "M"):
            rows = session.execute(
                select(RadiomicFeature.name, RadiomicFeature.value).where(
                    RadiomicFeature.extraction_fk == extraction.id
                )
            ).all()
            features[extraction.volume] = {name: value for name, value in rows}
    series_uid = extractions[0].ct_series_uid if extractions else ""
    ct_paths = session.scalars(
        select(Instance.path)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.series_instance_uid == series_uid)
    ).all()
    lesions = session.scalars(
        select(CtLesionResult).where(CtLesionResult.job_fk == job.id).order_by(CtLesionResult.lesion_number)
    ).all()
    report = session.scalar(
        select(Output).where(Output.job_fk == job.id, Output.kind == OutputKind.SR).order_by(Output.id.desc()).limit(1)
    )
    return Baseline(
        study_instance_uid=study_uid,
        study_date=parse_study_date(job.study.study_date),
        ct_paths=tuple(layout.absolute(p) for p in ct_paths),
        lesions=tuple(
            BaselineLesion(
                row.tracking_uid,
                row.tracking_identifier,
                LesionRole(row.role),
                row.lymph_node,
                tuple(row.centroid),  # type: ignore[arg-type]
                row.long_axis_mm,
                row.short_axis_mm,
                row.volume_ml,
            )
            for row in lesions
        ),
        features=features,
        report_sop_instance_uid=report.sop_instance_uid if report else "",
        report_path=layout.absolute(report.path) if report else None,
    )


def delta_table(session: Session) -> list[tuple[str, str, str, dict[str, float | None]]]:
    """(PatientID, issuer, pattern, Δ features) of each patient's newest paired follow-up."""
    newest = (
        select(func.max(CtAssessment.id))
        .join(Job, Job.id == CtAssessment.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .where(CtAssessment.deltas.is_not(None), Job.state == JobState.SUCCEEDED)
        .group_by(Study.patient_fk)
    )
    rows = session.execute(
        select(Patient.patient_id, Patient.issuer_of_patient_id, CtAssessment.pattern, CtAssessment.deltas)
        .join(Job, Job.id == CtAssessment.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(CtAssessment.id.in_(newest))
        .order_by(Patient.patient_id)
    ).all()
    return [(p, i, pattern, deltas) for p, i, pattern, deltas in rows]
