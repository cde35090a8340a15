"""Imported expression profiles and clinical records: idempotent upserts and the lookups the models need.

The caller owns the transaction (`Database.session()`): an import is one transaction, so a failure part-way
leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.states import JobState
from common.types import (
    CLINICAL_FIELDS,
    SLIDE_RESULTS,
    BloodImport,
    BloodValue,
    ClinicalImport,
    ClinicalVariables,
    ExpressionImport,
    ExpressionProfile,
    PatientData,
    SlideRecord,
    StudyFacts,
)
from storage.events import record_event
from storage.records import record_from, record_table
from storage.schema import (
    Base,
    BloodRecord,
    ClinicalRecord,
    ExpressionSample,
    Job,
    Patient,
    Study,
    utcnow,
)


def patient_key(patient_id: str, issuer: str) -> tuple[str, str]:
    return patient_id, issuer or ""


def _patient(session: Session, patient_id: str, issuer: str) -> Patient:
    patient = session.scalar(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer_of_patient_id == (issuer or ""))
    )
    if patient is None:
        # Data may be imported before the patient's images arrive; the images then join this row.
        patient = Patient(patient_id=patient_id, issuer_of_patient_id=issuer or "")
        session.add(patient)
        session.flush()
    return patient


def _upsert(
    session: Session,
    items: Sequence[ExpressionProfile] | Sequence[ClinicalVariables] | Sequence[BloodValue],
    existing: Callable[[Patient, Any], Base | None],
    new: Callable[[Patient, Any], Base],
    fill: Callable[[Base, Patient, Any], None],
) -> tuple[int, int]:
    """Each item's row updated (or added), under its patient (created when new). Returns (new, updated)."""
    added = updated = 0
    for item in items:
        patient = _patient(session, item.patient_id, item.issuer_of_patient_id)
        row = existing(patient, item)
        if row is None:
            row = new(patient, item)
            session.add(row)
            added += 1
        else:
            updated += 1
        fill(row, patient, item)
    return added, updated


def upsert_expression(session: Session, imported: ExpressionImport) -> tuple[int, int]:
    """Store every profile (re-import of a sample ID replaces it). Returns (new, updated)."""

    def fill(row: ExpressionSample, patient: Patient, profile: ExpressionProfile) -> None:
        for name in ("units", "cytact", "ifng6"):
            setattr(row, name, getattr(profile, name))
        row.patient_fk, row.values, row.source_file, row.imported_at = (
            patient.id,
            dict(profile.values),
            imported.file,
            utcnow(),
        )

    new, updated = _upsert(
        session,
        imported.profiles,
        lambda _, profile: session.scalar(
            select(ExpressionSample).where(ExpressionSample.sample_id == profile.sample_id)
        ),
        lambda _, profile: ExpressionSample(sample_id=profile.sample_id),
        fill,
    )
    record_event(
        session,
        "INFO",
        f"expression import {imported.file}: {new} new, {updated} updated sample(s), {imported.genes} genes, "
        f"read as {imported.orientation}",
    )
    return new, updated


def upsert_clinical(session: Session, imported: ClinicalImport) -> tuple[int, int]:
    """Store every patient's record (a re-import replaces the patient's record). Returns (new, updated)."""

    def fill(row: ClinicalRecord, patient: Patient, record: ClinicalVariables) -> None:
        for name in CLINICAL_FIELDS:
            setattr(row, name, getattr(record, name))
        row.source_file, row.updated_at = imported.file, utcnow()

    new, updated = _upsert(
        session,
        imported.records,
        lambda patient, _: session.scalar(select(ClinicalRecord).where(ClinicalRecord.patient_fk == patient.id)),
        lambda patient, _: ClinicalRecord(patient_fk=patient.id),
        fill,
    )
    record_event(session, "INFO", f"clinical import {imported.file}: {new} new, {updated} updated patient(s)")
    return new, updated


def upsert_blood(session: Session, imported: BloodImport) -> tuple[int, int]:
    """Store every value (a re-import of a patient's marker at a time point replaces it). Returns (new, updated)."""

    def fill(row: BloodRecord, patient: Patient, value: BloodValue) -> None:
        row.value, row.unit, row.sample_date = value.value, value.unit, value.sample_date
        row.source_file, row.updated_at = imported.file, utcnow()

    new, updated = _upsert(
        session,
        imported.values,
        lambda patient, value: session.scalar(
            select(BloodRecord).where(
                BloodRecord.patient_fk == patient.id,
                BloodRecord.time_point == value.time_point,
                BloodRecord.marker == value.marker,
            )
        ),
        lambda patient, value: BloodRecord(patient_fk=patient.id, time_point=value.time_point, marker=value.marker),
        fill,
    )
    record_event(session, "INFO", f"blood import {imported.file}: {new} new, {updated} updated value(s)")
    return new, updated


def _profile(row: ExpressionSample, patient: Patient) -> ExpressionProfile:
    return ExpressionProfile(
        sample_id=row.sample_id,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer_of_patient_id,
        units=row.units,
        values=dict(row.values),
        cytact=row.cytact,
        ifng6=row.ifng6,
    )


def _clinical(row: ClinicalRecord, patient: Patient) -> ClinicalVariables:
    fields = {name: getattr(row, name) for name in CLINICAL_FIELDS}
    return ClinicalVariables(patient_id=patient.patient_id, issuer_of_patient_id=patient.issuer_of_patient_id, **fields)


def patient_data(session: Session, patient_id: str, issuer: str) -> PatientData:
    """The patient's most recently imported expression profile and clinical record (either may be None), and the
    IDs of all its imported expression samples."""
    patient = session.scalar(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer_of_patient_id == (issuer or ""))
    )
    if patient is None:
        return PatientData(patient_id, issuer or "", None, None)
    sample = session.scalar(
        select(ExpressionSample)
        .where(ExpressionSample.patient_fk == patient.id)
        .order_by(ExpressionSample.imported_at.desc(), ExpressionSample.id.desc())
        .limit(1)
    )
    record = session.scalar(select(ClinicalRecord).where(ClinicalRecord.patient_fk == patient.id))
    blood = session.scalars(
        select(BloodRecord).where(BloodRecord.patient_fk == patient.id).order_by(BloodRecord.marker)
    ).all()
    return PatientData(
        patient.patient_id,
        patient.issuer_of_patient_id,
        _profile(sample, patient) if sample is not None else None,
        _clinical(record, patient) if record is not None else None,
        tuple(
            BloodValue(
                patient.patient_id, patient.issuer_of_patient_id, b.time_point, b.marker, b.value, b.unit, b.sample_date
            )
            for b in blood
        ),
        latest_slide(session, patient.id),
        tuple(
            session.scalars(
                select(ExpressionSample.sample_id)
                .where(ExpressionSample.patient_fk == patient.id)
                .order_by(ExpressionSample.sample_id)
            ).all()
        ),
    )


def latest_slide(session: Session, patient_fk: int) -> SlideRecord | None:
    """The patient's most recent successful whole-slide analysis."""
    slides = record_table(SLIDE_RESULTS)
    row = session.execute(
        select(slides)
        .join(Job, Job.id == slides.c.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.patient_fk == patient_fk, Job.state == JobState.SUCCEEDED)
        .order_by(Job.id.desc(), slides.c.id.desc())
        .limit(1)
    ).first()
    return record_from(SLIDE_RESULTS, row) if row is not None else None


def study_patient(session: Session, study_instance_uid: str) -> tuple[str, str] | None:
    row = session.execute(
        select(Patient.patient_id, Patient.issuer_of_patient_id)
        .join(Study, Study.patient_fk == Patient.id)
        .where(Study.study_instance_uid == study_instance_uid)
    ).first()
    return (row.patient_id, row.issuer_of_patient_id) if row else None


def all_patient_data(session: Session) -> dict[tuple[str, str], PatientData]:
    """Every patient with imported expression or clinical data, keyed by (PatientID, issuer)."""
    keys = session.execute(
        select(Patient.patient_id, Patient.issuer_of_patient_id).where(
            Patient.id.in_(select(ExpressionSample.patient_fk))
            | Patient.id.in_(select(ClinicalRecord.patient_fk))
            | Patient.id.in_(select(BloodRecord.patient_fk))
            | Patient.id.in_(
                select(Study.patient_fk)
                .join(Job, Job.study_fk == Study.id)
                .join(record_table(SLIDE_RESULTS), record_table(SLIDE_RESULTS).c.job_fk == Job.id)
            )
        )
    ).all()
    return {(p, i): patient_data(session, p, i) for p, i in keys}


def record_import_rejected(session: Session, file: str, problems: int) -> None:
    record_event(session, "WARNING", f"import {file} rejected with {problems} problem(s); nothing stored")


def study_patient_data(session: Session, study_instance_uid: str) -> PatientData | None:
    """The imported data of the patient a study is filed under (None: the study is not stored)."""
    identity = study_patient(session, study_instance_uid)
    return patient_data(session, *identity) if identity else None


def therapy_start(session: Session, facts: StudyFacts) -> date | None:
    """The imported therapy start of the study's patient (same PatientID and issuer), if any."""
    return session.scalar(
        select(ClinicalRecord.therapy_start)
        .join(Patient, Patient.id == ClinicalRecord.patient_fk)
        .where(Patient.patient_id == facts.patient_id, Patient.issuer_of_patient_id == facts.issuer_of_patient_id)
    )
