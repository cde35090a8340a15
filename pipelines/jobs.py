"""Analysis and report of one job, in a worker process (`pipelines.worker`): the heavy part of the flow
(PyTorch, SimpleITK, pyradiomics, highdicom), never imported by the node's own process.

`process_folder()` runs analyse + report on files in a folder without network or index (research use).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pydicom

from immunode.config import Settings
from pipelines import ct_radiomics
from pipelines.annotations import ANNOTATION_CLASSES, IMAGE_CLASSES, SR_CLASSES
from pipelines.ct_report import write_ct_report
from pipelines.errors import NothingToAnalyse, PipelineError
from pipelines.pet_quant import algorithm_identity, analyse_pet_series, summarise
from pipelines.report import write_pet_report
from pipelines.response_models import predict_response
from pipelines.types import PatientData, PetQuantResult, Report, ReportFile
from storage import index, patient_data
from storage import radiomics as radiomics_store
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Job, JobState, PairingOutcome

logger = logging.getLogger(__name__)


def _analyse_and_report_series(
    settings: Settings,
    paths: list[Path],
    previous_report: Path | None,
    new_path: Callable[[], Path],
    annotations: list[Path] | None = None,
    images: dict[str, pydicom.Dataset] | None = None,
    ct_paths: list[Path] | None = None,
    patient: PatientData | None = None,
) -> tuple[PetQuantResult, Report]:
    params = settings.pipelines.pet_quant
    result = analyse_pet_series(
        paths, params, annotations or (), images, ct_paths or (), settings.pipelines.annotations
    )
    embeddings = [lesion.embedding for lesion in result.lesions if lesion.embedding is not None]
    response = predict_response(
        patient, embeddings, result.cytact.model if result.cytact else None, settings.pipelines.response
    )
    result = dataclasses.replace(result, response=response)
    previous = pydicom.dcmread(previous_report) if previous_report is not None and previous_report.exists() else None
    return result, write_pet_report(result, algorithm_identity(params), summarise(result), previous, new_path)


def run_job(settings: Settings, database: Database, layout: FileLayout, job_id: int) -> JobState:
    """Analyse and report for one job; records outputs, deliveries and the job's final state."""
    with database.session() as session:
        job = session.get(Job, job_id)
        pipeline, study_uid = job.pipeline, job.study.study_instance_uid
    if pipeline == "ct_radiomics":
        return _run_ct_job(settings, database, layout, job_id)
    with database.session() as session:
        inputs = index.job_series_paths(session, layout, job_id)
        annotations = list(index.study_instances(session, layout, job_id, ANNOTATION_CLASSES).values())
        # Only SR annotations (2D image coordinates) need the geometry of the images they point at.
        has_sr = bool(index.study_instances(session, layout, job_id, SR_CLASSES))
        image_paths = index.study_instances(session, layout, job_id, IMAGE_CLASSES) if has_sr else {}
        identity = patient_data.study_patient(session, study_uid)
        patient = patient_data.patient_data(session, *identity) if identity else None
    images = {uid: pydicom.dcmread(path, stop_before_pixels=True) for uid, path in image_paths.items()}
    if pipeline != "pet_quant":
        with database.session() as session:
            index.finish_job(session, job_id, JobState.FAILED, f"unknown pipeline {pipeline!r}")
        return JobState.FAILED
    produced: list[tuple[ReportFile, str, int | None]] = []
    results: list[PetQuantResult] = []
    problems: list[str] = []
    summaries: list[str] = []
    for series_uid, paths in sorted(inputs.items()):
        with database.session() as session:
            previous = index.previous_report_path(session, layout, study_uid, series_uid, job_id)
            ct_paths = index.study_ct_paths(session, layout, job_id, series_uid)
        try:
            result, report = _analyse_and_report_series(
                settings,
                paths,
                previous[1] if previous else None,
                lambda: layout.new_output_path(job_id),
                annotations,
                images,
                ct_paths,
                patient,
            )
        except PipelineError as error:
            problems.append(f"series {series_uid}: {error}")
            logger.warning("job %d series %s: %s", job_id, series_uid, error)
            continue
        summaries.append(report.summary)
        results.append(result)
        produced += [(f, series_uid, previous[0] if previous and f.kind == "SR" else None) for f in report.files]
    destinations = [d.name for d in settings.result_destinations()]
    with database.session() as session:
        if not produced:
            reason = "; ".join(problems) or str(NothingToAnalyse("no series selected for analysis"))
            index.finish_job(session, job_id, JobState.FAILED, reason)
            return JobState.FAILED
        index.record_outputs(session, layout, job_id, produced, destinations)
        for result in results:
            index.record_lesion_results(session, job_id, result)
        detail = " ".join(summaries) + (" Not analysed: " + "; ".join(problems) if problems else "")
        index.finish_job(session, job_id, JobState.SUCCEEDED, detail)
    return JobState.SUCCEEDED


BASELINE_OUTCOMES = {PairingOutcome.PAIRED, PairingOutcome.TIMED_OUT, PairingOutcome.RETRIEVING, PairingOutcome.WAITING}


def _run_ct_job(settings: Settings, database: Database, layout: FileLayout, job_id: int) -> JobState:
    """Analyse + report of the longitudinal CT method for one job (the pairing stage decided the baseline)."""
    with database.session() as session:
        ct_paths, pet_paths = radiomics_store.ct_job_inputs(session, layout, job_id)
        # CT lesions come from SEG and RTSTRUCT (SR annotations hold points, not regions).
        annotations = list(index.study_instances(session, layout, job_id, ANNOTATION_CLASSES - SR_CLASSES).values())
        pairing = radiomics_store.latest_pairing(session, job_id)
        expected = pairing is not None and pairing.outcome in BASELINE_OUTCOMES
        baseline = None
        if pairing is not None and pairing.outcome is PairingOutcome.PAIRED and pairing.baseline_study_uid:
            baseline = radiomics_store.load_baseline(session, layout, pairing.baseline_study_uid)
        reason = pairing.reason if pairing else "no pairing decision"
    params = settings.pipelines.ct_radiomics
    try:
        if not ct_paths:
            raise NothingToAnalyse("no CT series selected for analysis")
        with tempfile.TemporaryDirectory(prefix="radiomics-", dir=layout.root) as workdir:
            result = ct_radiomics.analyse_ct_study(
                ct_paths,
                annotations,
                pet_paths,
                params,
                settings.pipelines.pet_quant,
                baseline,
                reason,
                Path(workdir),
                baseline_expected=expected,
                annotation_settings=settings.pipelines.annotations,
            )
        summary = ct_radiomics.summarise(result)
        report = write_ct_report(
            result, ct_radiomics.algorithm_identity(params), summary, lambda: layout.new_output_path(job_id)
        )
    except PipelineError as error:
        logger.warning("job %d: %s", job_id, error)
        with database.session() as session:
            index.finish_job(session, job_id, JobState.FAILED, str(error))
        return JobState.FAILED
    destinations = [d.name for d in settings.result_destinations()]
    with database.session() as session:
        index.record_outputs(
            session, layout, job_id, [(f, result.ct_series_uid, None) for f in report.files], destinations
        )
        radiomics_store.record_ct_result(session, job_id, result)
        index.finish_job(session, job_id, JobState.SUCCEEDED, summary)
    return JobState.SUCCEEDED


def process_folder(settings: Settings, folder: Path, out: Path) -> tuple[list[Report], list[str]]:
    """Offline research mode: every PET series found under `folder` → SEG + SR written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[Path]] = defaultdict(list)
    problems: list[str] = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # not DICOM, truncated, unreadable: report and go on
            problems.append(f"{path}: not readable as DICOM ({error.__class__.__name__}: {error})")
            continue
        if "SOPInstanceUID" not in header:
            problems.append(f"{path}: not readable as DICOM (no SOP Instance UID: truncated or not an instance)")
            continue
        if header.get("Modality") == "PT" and "SeriesInstanceUID" in header:
            series[str(header.SeriesInstanceUID)].append(path)
    if not series:
        problems.append(f"no PET series under {folder}")
    counter = iter(range(1, 1_000_000))
    reports = []
    for series_uid, paths in sorted(series.items()):
        try:
            _, report = _analyse_and_report_series(
                settings, paths, None, lambda: out / f"{series_uid[-24:]}-{next(counter):03d}.dcm"
            )
            reports.append(report)
        except PipelineError as error:
            problems.append(f"series {series_uid}: {error}")
    return reports, problems
