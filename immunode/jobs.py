"""Analysis and report of one job, in a worker process (`immunode.worker`): the heavy part of the flow
(PyTorch, SimpleITK, pyradiomics, highdicom, imported by the pipelines' methods), never run in the node's
own process.

`run_job` reads the job's inputs from the store, runs its registered pipeline (`analyse`, then `report`)
and records outputs, deliveries, result records and the job's final state. `process_folder` runs the
pipelines that need no store (not longitudinal) on files in a folder, without network or index (research
use).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pydicom
from sqlalchemy.orm import Session

from common.states import JobState, PairingOutcome
from common.types import JobResult, ResultDestination, SeriesFiles, StoredFile
from immunode.config import Settings
from immunode.routing import route
from pipelines.errors import PipelineError, UndeclaredRecords
from pipelines.registry import JobInputs, PairingContext, Pipeline
from storage import jobs, pairings, patients, results, studies
from storage.database import Database
from storage.errors import ClaimLost, IndexOutage
from storage.files import FileLayout
from storage.types import CompletedStudy, JobClaim, SeriesSummary

logger = logging.getLogger(__name__)

RECORD_BACKOFF_INITIAL_S = 0.5  # first wait before recording a job's outcome again; doubles up to the maximum
RECORD_BACKOFF_MAX_S = 10.0


def _analyse_and_report(
    pipeline: Pipeline, inputs: JobInputs, settings: Settings, new_path: Callable[[], Path], scratch: Path
) -> JobResult:
    with tempfile.TemporaryDirectory(prefix=f"{pipeline.name}-", dir=scratch) as workdir:
        result = pipeline.analyse(inputs, settings.pipelines, Path(workdir))
    return pipeline.report(inputs, result, settings.pipelines, new_path)


def _inputs(settings: Settings, database: Database, layout: FileLayout, job_id: int, pipeline: Pipeline) -> JobInputs:
    with database.session() as session:
        spec = jobs.job_spec(session, job_id)
        study_uid = spec.study_instance_uid
        pairing = None
        if pipeline.longitudinal:
            decision = pairings.latest_pairing(session, job_id)
            baseline = None
            if decision is not None and decision.baseline_study_uid and decision.outcome is PairingOutcome.PAIRED:
                followup = studies.study_facts(session, study_uid)
                baseline = results.load_baseline(
                    session,
                    layout,
                    decision.baseline_study_uid,
                    pipeline.name,
                    followup.study_date if followup else None,
                )
            pairing = PairingContext(
                decision.outcome if decision else None,
                decision.reason if decision else "no pairing decision",
                baseline,
            )
        return JobInputs.read_by(
            pipeline.reads,
            study_uid,
            spec.selected_series,
            studies.study_series(session, layout, study_uid),
            patients.study_patient_data(session, study_uid) if pipeline.reads.patient_data else None,
            previous_reports=results.previous_reports(session, layout, study_uid, job_id),
            pairing=pairing,
            job_id=job_id,
            version=results.result_version(session, study_uid, job_id),
            seg_encodings=settings.seg_encodings(spec.rule),
        )


def run_job(settings: Settings, database: Database, layout: FileLayout, job_id: int) -> JobState:
    """Analyse and report for one job; records outputs, deliveries, result records and the final state.

    A pipeline's own failure (PipelineError) and an unexpected error in it (a bug, data it cannot handle; the
    traceback goes to the log) fail the job with the reason: retrying would fail the same way. Only a worker
    that dies (killed, out of memory, CPU limit) is retried, by the runner. Raises IndexOutage when the index
    stays unreachable (`_record`), and ClaimLost when the job was taken from this run meanwhile."""
    with database.session() as session:
        claim = jobs.job_claim(session, job_id)
        spec = jobs.job_spec(session, job_id)
    name = spec.pipeline
    try:
        pipeline = settings.registry.get(name)
        inputs = _inputs(settings, database, layout, job_id, pipeline)
        result = _analyse_and_report(pipeline, inputs, settings, lambda: layout.new_output_path(job_id), layout.root)
        undeclared = pipeline.writes.undeclared(result.records)
        if undeclared:
            for output in result.outputs:
                output.path.unlink(missing_ok=True)
            raise UndeclaredRecords(
                f"the pipeline returned records of type {', '.join(undeclared)}, which it does not declare "
                "(Writes.records): nothing recorded"
            )
    except PipelineError as error:
        logger.warning("job %d: %s", job_id, error)
        return _finish(settings, database, claim, JobState.FAILED, str(error))
    except IndexOutage:
        raise
    except Exception as error:
        logger.exception("job %d: unexpected error in the pipeline", job_id)
        reason = f"unexpected error in the pipeline: {error.__class__.__name__}: {error} (traceback in the log)"
        return _finish(settings, database, claim, JobState.FAILED, reason[:2000])
    destinations = [ResultDestination(d.name, d.seg_encoding) for d in settings.result_destinations(spec.rule)]

    def record(session: Session) -> None:
        results.record_job_result(session, layout, job_id, result, destinations, pipeline.writes.records)
        jobs.finish_job(session, job_id, JobState.SUCCEEDED, result.summary)

    try:
        _record(settings, database, claim, record)
    except (IndexOutage, ClaimLost):
        for output in result.outputs:  # never indexed: the job runs again (or ran elsewhere)
            output.path.unlink(missing_ok=True)
        raise
    return JobState.SUCCEEDED


def _finish(settings: Settings, database: Database, claim: JobClaim, state: JobState, detail: str) -> JobState:
    _record(settings, database, claim, lambda session: jobs.finish_job(session, claim.job_id, state, detail))
    return state


def _record(settings: Settings, database: Database, claim: JobClaim, write: Callable[[Session], None]) -> None:
    """A job's outcome into the index, in one transaction, while its claim holds. An index that cannot be reached
    is retried with back-off (one log line when the retries begin, one when they end) for up to
    `workers.record_retry_s`; past that IndexOutage is raised and the runner hands the job back to the queue
    once the index answers. A job taken from this run meanwhile raises ClaimLost (its new holder records)."""
    deadline = time.monotonic() + settings.workers.record_retry_s
    delay, retries = RECORD_BACKOFF_INITIAL_S, 0
    while True:
        try:
            with database.session() as session:
                if jobs.check_claim(session, claim):
                    write(session)
        except ClaimLost as error:
            logger.warning("job %d: %s: its outcome here is not recorded", claim.job_id, error)
            raise
        except IndexOutage as error:
            if time.monotonic() + delay > deadline:
                logger.error(
                    "job %d: outcome not recorded, the index still unavailable after %d retries (%s): the job goes "
                    "back to the queue when it answers",
                    claim.job_id,
                    retries,
                    error,
                )
                raise
            if retries == 0:
                logger.warning(
                    "job %d: outcome not recorded yet (%s); retried for up to %.0f s",
                    claim.job_id,
                    error,
                    settings.workers.record_retry_s,
                )
            retries += 1
            time.sleep(delay)
            delay = min(delay * 2, RECORD_BACKOFF_MAX_S)
            continue
        if retries:
            logger.info(
                "job %d: outcome recorded after %d retr%s", claim.job_id, retries, "y" if retries == 1 else "ies"
            )
        return


def _folder_studies(folder: Path, problems: list[str]) -> dict[str, list[tuple[pydicom.Dataset, Path]]]:
    found: dict[str, list[tuple[pydicom.Dataset, Path]]] = defaultdict(list)
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # not DICOM, truncated, unreadable: report and go on
            problems.append(f"{path}: not readable as DICOM ({error.__class__.__name__}: {error})")
            continue
        if "SOPInstanceUID" not in header or "SeriesInstanceUID" not in header:
            problems.append(f"{path}: not readable as DICOM (no SOP Instance UID: truncated or not an instance)")
            continue
        found[str(header.get("StudyInstanceUID", ""))].append((header, path))
    return found


def _series(headers: list[tuple[pydicom.Dataset, Path]]) -> tuple[SeriesFiles, ...]:
    grouped: dict[str, list[tuple[pydicom.Dataset, Path]]] = defaultdict(list)
    for header, path in headers:
        grouped[str(header.SeriesInstanceUID)].append((header, path))
    return tuple(
        SeriesFiles(
            uid,
            str(members[0][0].get("Modality", "")),
            str(members[0][0].get("FrameOfReferenceUID", "")),
            tuple(StoredFile(str(h.SOPInstanceUID), str(h.SOPClassUID), p) for h, p in members),
        )
        for uid, members in grouped.items()
    )


def process_folder(settings: Settings, folder: Path, out: Path) -> tuple[list[JobResult], list[str]]:
    """Offline research mode: the studies found under `folder`, routed by the configured rules to the
    pipelines that need no store (longitudinal ones are left out), their SEG + SR written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    counter = iter(range(1, 1_000_000))
    reports: list[JobResult] = []
    found = _folder_studies(folder, problems)
    for study_uid, headers in sorted(found.items()):
        series = _series(headers)
        summary = CompletedStudy(
            study_uid,
            1,
            tuple(
                SeriesSummary(
                    s.series_instance_uid,
                    s.modality,
                    str(_first(headers, s).get("SeriesDescription", "")),
                    str(_first(headers, s).get("Manufacturer", "")),
                    s.frame_of_reference_uid,
                    len(s.files),
                )
                for s in series
            ),
        )
        for decision in route(summary, settings.routing.rules, settings.registry):
            if decision.pipeline.longitudinal:
                continue
            inputs = JobInputs.read_by(decision.pipeline.reads, study_uid, decision.series_instance_uids, series)
            try:
                result = _analyse_and_report(
                    decision.pipeline,
                    inputs,
                    settings,
                    lambda uid=study_uid: out / f"{uid[-24:]}-{next(counter):03d}.dcm",
                    out,
                )
            except PipelineError as error:
                problems.append(f"study {study_uid}, {decision.pipeline.name}: {error}")
                continue
            reports.append(result)
            problems += result.problems
    if not reports and not problems:
        names = ", ".join(p.name for p in settings.registry.pipelines if not p.longitudinal)
        problems.append(f"no series under {folder} that a routing rule sends to {names}")
    return reports, problems


def _first(headers: list[tuple[pydicom.Dataset, Path]], series: SeriesFiles) -> pydicom.Dataset:
    return next(h for h, _ in headers if str(h.SeriesInstanceUID) == series.series_instance_uid)
