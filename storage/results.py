"""What jobs produced: output files (with the deliveries they queue) and result records (through
`storage.records`, in the tables their pipelines declare); the previous reports a rerun supersedes; baselines as
later follow-ups read them; and the research tables over the built-in pipelines' records.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import date

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, aliased

from common.records import RecordTable
from common.states import JobState, OutputKind
from common.types import (
    CT_ASSESSMENTS,
    CT_LESION_RESULTS,
    LESION_RESULTS,
    RADIOMICS_EXTRACTIONS,
    Baseline,
    BaselineLesion,
    CtAssessmentRecord,
    CtLesionRecord,
    JobResult,
    OutputFile,
    PreviousReport,
    PriorAssessment,
    ResultDestination,
    ResultVersion,
    parse_dicom_date,
)
from storage.files import FileLayout
from storage.records import entries, read_records, record_from, record_table, write_records
from storage.schema import Delivery, Instance, Job, Output, Patient, Series, Study
from storage.types import (
    LesionCytAct,
    PetCytActAnalysis,
    ResultVersionRecord,
    StoredAssessment,
    StudyVersions,
)


def previous_reports(session: Session, layout: FileLayout, study_uid: str, job_id: int) -> dict[str, PreviousReport]:
    """Source series → the newest SR earlier jobs of the same pipeline produced for it in this study (a rerun
    supersedes it), with that job's SEG of the series."""
    pipeline = session.scalar(select(Job.pipeline).where(Job.id == job_id))
    rows = session.execute(
        select(Output.job_fk, Output.kind, Output.source_series_uid, Output.sop_instance_uid, Output.path)
        .join(Job, Job.id == Output.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.id != job_id, Job.pipeline == pipeline)
        .order_by(Output.id)
    ).all()
    segmentations = {(job, series): path for job, kind, series, _, path in rows if kind is OutputKind.SEG}
    return {
        series: PreviousReport(
            uid,
            layout.absolute(path),
            layout.absolute(segmentations[(job, series)]) if (job, series) in segmentations else None,
        )
        for job, kind, series, uid, path in rows
        if kind is OutputKind.SR
    }


def result_version(session: Session, study_uid: str, job_id: int) -> ResultVersion:
    """The version a job writes: one more than the earlier jobs of its pipeline for the study that produced
    results, its reason, and the Series Numbers the study already holds (received series and our outputs)."""
    job = session.get(Job, job_id)
    earlier = session.scalar(
        select(func.count(func.distinct(Output.job_fk)))
        .join(Job, Job.id == Output.job_fk)
        .where(Job.study_fk == job.study_fk, Job.pipeline == job.pipeline, Job.id < job_id)
    )
    received = session.scalars(
        select(Series.series_number).where(Series.study_fk == job.study_fk, Series.series_number.is_not(None))
    ).all()
    ours = session.scalars(
        select(Output.series_number)
        .join(Job, Job.id == Output.job_fk)
        .where(Job.study_fk == job.study_fk, Output.series_number.is_not(None))
    ).all()
    return ResultVersion(int(earlier or 0) + 1, job.reason, frozenset(int(n) for n in (*received, *ours)))


def result_versions(session: Session, limit: int) -> list[StudyVersions]:
    """The chain of result versions of the `limit` studies with results most recently written, newest study
    first; each version is one job's outputs, numbered per study and pipeline in the order they were written."""
    recent = (
        select(Job.study_fk, func.max(Output.id).label("newest"))
        .join(Output, Output.job_fk == Job.id)
        .group_by(Job.study_fk)
        .order_by(func.max(Output.id).desc())
        .limit(limit)
        .subquery()
    )
    superseded = aliased(Output)
    rows = session.execute(
        select(
            Study.study_instance_uid,
            Job.pipeline,
            Job.id,
            Job.reason,
            Output.created_at,
            Output.kind,
            Output.series_number,
            Output.sop_instance_uid,
            superseded.sop_instance_uid,
            recent.c.newest,
        )
        .join(Job, Job.id == Output.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .join(recent, recent.c.study_fk == Study.id)
        .outerjoin(superseded, superseded.id == Output.supersedes_fk)
        .order_by(recent.c.newest.desc(), Job.id, Output.id)
    ).all()
    chains: dict[str, dict[int, list]] = {}
    for study_uid, pipeline, job_id, reason, at, kind, number, sop_uid, supersedes, _ in rows:
        job = chains.setdefault(study_uid, {}).setdefault(job_id, [pipeline, reason, at, [], "", ""])
        if number is not None:
            job[3].append(number)
        if kind is OutputKind.SR:
            job[4], job[5] = sop_uid, supersedes or ""
    found = []
    for study_uid, by_job in chains.items():
        counted: dict[str, int] = {}
        versions = []
        for job_id, (pipeline, reason, at, numbers, sr_uid, supersedes) in by_job.items():
            counted[pipeline] = counted.get(pipeline, 0) + 1
            versions.append(
                ResultVersionRecord(
                    pipeline, counted[pipeline], job_id, reason, at, tuple(numbers), sr_uid, supersedes
                )
            )
        found.append(StudyVersions(study_uid, tuple(versions)))
    return found


def record_job_result(
    session: Session,
    layout: FileLayout,
    job_id: int,
    result: JobResult,
    destinations: Sequence[ResultDestination],
    tables: Sequence[RecordTable] = (),
) -> None:
    """Index a job's validated outputs (queueing a delivery to each destination it goes to: an SR to every
    destination, a SEG to those that asked for its encoding) and its result records, in the `tables` its
    pipeline declares (`storage.errors.UndeclaredRecord` for a record of another type)."""
    for output in result.outputs:
        _record_output(session, layout, job_id, output, destinations)
    if result.records:
        write_records(session, job_id, session.get(Job, job_id).study_fk, result.records, tables)


def _record_output(
    session: Session, layout: FileLayout, job_id: int, file: OutputFile, destinations: Sequence[ResultDestination]
) -> None:
    supersedes = (
        session.scalar(select(Output.id).where(Output.sop_instance_uid == file.supersedes_sop_instance_uid))
        if file.supersedes_sop_instance_uid
        else None
    )
    output = Output(
        job_fk=job_id,
        kind=file.kind,
        sop_class_uid=file.sop_class_uid,
        sop_instance_uid=file.sop_instance_uid,
        source_series_uid=file.source_series_uid,
        series_instance_uid=file.series_instance_uid,
        path=layout.relative(file.path),
        sha256=hashlib.sha256(file.path.read_bytes()).hexdigest(),
        supersedes_fk=supersedes,
        series_number=file.series_number,
    )
    session.add(output)
    session.flush()
    for destination in destinations:
        if file.goes_to(destination):
            session.add(Delivery(output_fk=output.id, destination=destination.name))


def pet_cytact_analyses(session: Session) -> list[PetCytActAnalysis]:
    """Every successful analysis with lesion CytAct, per patient, with its study date and model."""
    lesions = record_table(LESION_RESULTS)
    rows = session.execute(
        select(
            Patient.patient_id,
            Patient.issuer_of_patient_id,
            Study.study_instance_uid,
            Study.study_date,
            Job.id,
            lesions,
        )
        .join(Study, Study.patient_fk == Patient.id)
        .join(Job, Job.study_fk == Study.id)
        .join(lesions, lesions.c.job_fk == Job.id)
        .where(Job.state == JobState.SUCCEEDED, lesions.c.cytact.is_not(None))
        .order_by(Job.id, lesions.c.lesion_number)
    ).all()
    found: dict[int, tuple[tuple, list[LesionCytAct], str]] = {}
    for row in rows:
        patient_id, issuer, study_uid, study_date, job_id = row[:5]
        lesion = record_from(LESION_RESULTS, row)
        head = (patient_id, issuer, study_uid, parse_dicom_date(study_date), job_id)
        _, found_lesions, _ = found.setdefault(job_id, (head, [], lesion.cytact_model))
        found_lesions.append(
            LesionCytAct(
                lesion.tracking_uid, lesion.lesion_number, lesion.cytact, lesion.long_axis_mm, lesion.patient_summary
            )
        )
    return [PetCytActAnalysis(*head, model, tuple(lesions)) for head, lesions, model in found.values()]


def _assessments(session: Session, pipeline: str, *where: ColumnElement[bool]) -> list[tuple]:
    """(study UID, study date, patient ID, issuer, job, assessment) of the successful jobs of a pipeline, in job
    order."""
    table = record_table(CT_ASSESSMENTS)
    rows = session.execute(
        select(
            Study.study_instance_uid, Study.study_date, Patient.patient_id, Patient.issuer_of_patient_id, table
        )
        .join(Job, Job.id == table.c.job_fk)
        .join(Study, Study.id == Job.study_fk)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(Job.pipeline == pipeline, Job.state == JobState.SUCCEEDED, *where)
        .order_by(Job.id)
    ).all()
    return [(*row[:4], row.job_fk, record_from(CT_ASSESSMENTS, row)) for row in rows]


def prior_assessments(session: Session, baseline_uid: str, pipeline: str, before: date | None) -> list[PriorAssessment]:
    """The assessments of a baseline stored before a follow-up of date `before`, oldest first, numbered (T1 ...)."""
    baseline = record_table(CT_ASSESSMENTS).c.baseline_study_uid
    newest: dict[str, tuple[date | None, int, CtAssessmentRecord]] = {}
    for study_uid, study_date, _, _, job_id, assessment in _assessments(session, pipeline, baseline == baseline_uid):
        newest[study_uid] = (parse_dicom_date(study_date), job_id, assessment)  # a study analysed again: its newest
    earlier = sorted(
        (
            (uid, when, job_id, a)
            for uid, (when, job_id, a) in newest.items()
            if when is not None and before is not None and when < before
        ),
        key=lambda item: item[1],
    )
    return [
        PriorAssessment(
            uid,
            when,
            number,
            a.sum_t1_mm,
            a.category,
            lesion_diameters(session, job_id),
            dict(a.deltas) if a.deltas is not None else None,
        )
        for number, (uid, when, job_id, a) in enumerate(earlier, start=1)
    ]


def lesion_diameters(session: Session, job_id: int) -> dict[str, float]:
    """Each CT lesion's RECIST diameter (short axis for nodes) a job measured, by tracking UID."""
    lesions: list[CtLesionRecord] = read_records(session, CT_LESION_RESULTS, job_id=job_id)
    return {row.tracking_uid: row.short_axis_mm if row.lymph_node else row.long_axis_mm for row in lesions}


def load_baseline(
    session: Session, layout: FileLayout, study_uid: str, pipeline: str, before: date | None = None
) -> Baseline | None:
    """The baseline as the newest successful job of a longitudinal pipeline left it, with its assessments before a
    follow-up of date `before`; None when it has none."""
    job = session.scalar(
        select(Job)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == pipeline, Job.state == JobState.SUCCEEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )
    if job is None:
        return None
    extractions = record_table(RADIOMICS_EXTRACTIONS)
    series_uid = session.scalar(
        select(extractions.c.ct_series_uid).where(extractions.c.job_fk == job.id).order_by(extractions.c.id).limit(1)
    )
    ct_paths = session.scalars(
        select(Instance.path)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.series_instance_uid == (series_uid or ""))
    ).all()
    lesions: list[CtLesionRecord] = read_records(session, CT_LESION_RESULTS, job_id=job.id)
    report = session.scalar(
        select(Output).where(Output.job_fk == job.id, Output.kind == OutputKind.SR).order_by(Output.id.desc()).limit(1)
    )
    return Baseline(
        study_instance_uid=study_uid,
        study_date=parse_dicom_date(job.study.study_date),
        ct_paths=tuple(layout.absolute(p) for p in ct_paths),
        lesions=tuple(
            BaselineLesion(
                lesion.tracking_uid,
                lesion.tracking_identifier,
                lesion.role,
                lesion.lymph_node,
                lesion.centroid,
                lesion.long_axis_mm,
                lesion.short_axis_mm,
                lesion.volume_ml,
            )
            for lesion in sorted(lesions, key=lambda lesion: lesion.lesion_number)
        ),
        features=job_features(session, job.id),
        report_sop_instance_uid=report.sop_instance_uid if report else "",
        report_path=layout.absolute(report.path) if report else None,
        assessments=tuple(prior_assessments(session, study_uid, pipeline, before)),
    )


def job_features(session: Session, job_id: int) -> dict[str, dict[str, float]]:
    """The primary (P) and merged-metastases (M) radiomic features a job extracted: volume → name → value."""
    table = record_table(RADIOMICS_EXTRACTIONS)
    rows = session.execute(
        select(table.c.id, table.c.volume).where(table.c.job_fk == job_id, table.c.volume.in_(("P", "M")))
    ).all()
    return {volume: entries(session, RADIOMICS_EXTRACTIONS, row_id) for row_id, volume in rows}


def _newest_job(session: Session, study_uid: str, pipeline: str) -> int | None:
    return session.scalar(
        select(Job.id)
        .join(Study, Study.id == Job.study_fk)
        .where(Study.study_instance_uid == study_uid, Job.pipeline == pipeline, Job.state == JobState.SUCCEEDED)
        .order_by(Job.id.desc())
        .limit(1)
    )


def ct_assessments(session: Session, pipeline: str) -> list[StoredAssessment]:
    """Every follow-up assessment of a longitudinal pipeline (the newest successful job of each study), per
    patient in study-date order; the first assessments (T1) with their feature values and the baseline's."""
    baseline = record_table(CT_ASSESSMENTS).c.baseline_study_uid
    newest: dict[str, StoredAssessment] = {}
    jobs: dict[str, int] = {}
    for study_uid, study_date, patient_id, issuer, job_id, a in _assessments(session, pipeline, baseline != ""):
        jobs[study_uid] = job_id
        newest[study_uid] = StoredAssessment(
            patient_id,
            issuer,
            a.baseline_study_uid,
            study_uid,
            parse_dicom_date(study_date),
            a.assessment,
            a.category,
            a.best_response,
            a.resistance,
            a.pattern,
            a.new_lesions,
            a.progressive_lesions,
            dict(a.deltas) if a.deltas is not None else None,
        )
    for study_uid, found in newest.items():
        if found.assessment in (1, None):
            baseline_job = _newest_job(session, found.baseline_study_uid, pipeline)
            newest[study_uid] = replace(
                found,
                features_t0=job_features(session, baseline_job) if baseline_job is not None else {},
                features_t1=job_features(session, jobs[study_uid]),
            )
    return sorted(newest.values(), key=lambda x: (x.patient_id, x.issuer_of_patient_id, x.study_date or date.min))


def latest_lesion_embeddings(session: Session) -> dict[tuple[str, str], tuple[str, list[list[float]]]]:
    """(PatientID, issuer) → (CytAct model key, lesion embeddings) of the most recent successful PET analysis."""
    lesions = record_table(LESION_RESULTS)
    rows = session.execute(
        select(Patient.patient_id, Patient.issuer_of_patient_id, Job.id, lesions.c.cytact_model, lesions.c.embedding)
        .join(Study, Study.patient_fk == Patient.id)
        .join(Job, Job.study_fk == Study.id)
        .join(lesions, lesions.c.job_fk == Job.id)
        .where(Job.state == JobState.SUCCEEDED, lesions.c.embedding.is_not(None))
        .order_by(Job.id, lesions.c.id)
    ).all()
    latest_job: dict[tuple[str, str], int] = {}
    embeddings: dict[tuple[str, str], tuple[str, list[list[float]]]] = {}
    for patient_id, issuer, job_id, model, embedding in rows:  # in job order: a later analysis replaces earlier
        key = (patient_id, issuer)
        if latest_job.get(key) != job_id:
            latest_job[key], embeddings[key] = job_id, (model, [])
        embeddings[key][1].append(list(embedding))
    return embeddings
