"""The whole path of a study through the node, in one place:

    receive   dicom_node.scp.StorageSCP          C-ECHO / C-STORE from allowed peers (SCP threads)
    store     storage.store.InstanceStore        fsync'd file + committed index row, then status 0x0000
    route     route_quiet_studies()              studies quiet for the stability time → jobs (scheduler)
    pair      pair_jobs()                        CT jobs: find the baseline in the store, else C-FIND/C-MOVE
                                                 it from the Q/R peer and wait (scheduler)
    analyse   pipelines.jobs.run_job()          → pet_quant: SUV volume, lesions, measurements (worker process)
                                                → ct_radiomics: CT lesions, tracking, RECIST, radiomics, Δ
    report    pipelines.report / ct_report       SEG + TID 1500 SR, dciodvfy + highdicom read-back gate
    dispatch  dicom_node.dispatch.dispatch_due   C-STORE to destinations, back-off, dead letters (scheduler)

The stages here (route, pair) run in the node's own process and import nothing heavy; analysis and report
(`pipelines.jobs`, with PyTorch, SimpleITK, pyradiomics and highdicom) run in the worker processes only, so
that the node that answers scanners stays small. `pipelines.jobs.process_folder()` runs analyse + report on
files in a folder without network or index (research use).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from dicom_node import qr
from dicom_node.errors import RetrieveError
from immunode.config import Settings
from pipelines.pairing import choose_baseline, search_window
from pipelines.routing import route
from pipelines.types import PairingDecisionKind
from storage import index
from storage import radiomics as radiomics_store
from storage.database import Database
from storage.schema import Job, JobState, PairingOutcome, utcnow

logger = logging.getLogger(__name__)


def route_quiet_studies(settings: Settings, database: Database) -> list[int]:
    """Route stage: complete every study quiet for the stability time and queue its jobs."""
    with database.session() as session:
        studies = index.quiet_studies(session, timedelta(seconds=settings.routing.study_stable_s))
    job_ids: list[int] = []
    for study in studies:
        decisions = route(study, settings.routing.rules)
        with database.session() as session:
            job_ids += index.complete_study(session, study, decisions)
        logger.info(
            "study %s revision %d complete: %d job(s)", study.study_instance_uid, study.revision, len(decisions)
        )
    return job_ids


def pair_jobs(settings: Settings, database: Database, audit: qr.Audit | None = None) -> None:
    """Pair stage: decide each new CT job's baseline, and release waiting jobs whose baseline is ready or late."""
    with database.session() as session:
        new = radiomics_store.jobs_in_state(session, JobState.PAIRING)
        waiting = radiomics_store.jobs_in_state(session, JobState.WAITING_BASELINE)
    for job_id, study_uid, _ in new:
        _pair_new_job(settings, database, job_id, study_uid, audit)
    for job_id, _, until in waiting:
        _release_if_ready(database, job_id, until)


def _record(database: Database, job_id: int, outcome: PairingOutcome, reason: str, **kwargs) -> None:  # noqa: ANN003
    logger.info("job %d pairing %s: %s", job_id, outcome.value, reason)
    with database.session() as session:
        radiomics_store.record_pairing(session, job_id, outcome, reason, **kwargs)


def _pair_new_job(settings: Settings, database: Database, job_id: int, study_uid: str, audit: qr.Audit | None) -> None:
    rules = settings.pipelines.ct_radiomics.pairing
    with database.session() as session:
        awaited = radiomics_store.awaited_baseline(session, study_uid)
        facts = radiomics_store.study_facts(session, study_uid)
        candidates = radiomics_store.candidate_studies(session, facts)
        therapy = radiomics_store.therapy_start(session, facts)
    if awaited:
        _record(database, job_id, PairingOutcome.BASELINE_ITSELF, "awaited as the baseline of a waiting follow-up")
        return
    choice = choose_baseline(facts, candidates, rules, therapy)
    wait_until = utcnow() + timedelta(seconds=rules.baseline_wait_s)
    if choice.kind is PairingDecisionKind.BASELINE_ITSELF:
        _record(database, job_id, PairingOutcome.BASELINE_ITSELF, choice.reason)
    elif choice.kind is PairingDecisionKind.PAIRED:
        baseline_uid = choice.baseline.study_instance_uid
        with database.session() as session:
            state = radiomics_store.study_ct_job_state(session, baseline_uid)
        if state in (JobState.PAIRING, JobState.WAITING_BASELINE, JobState.PENDING, JobState.RUNNING):
            reason = f"{choice.reason}; its CT analysis is {state.value}: waiting"
            _record(
                database,
                job_id,
                PairingOutcome.WAITING,
                reason,
                baseline_uid=baseline_uid,
                next_state=JobState.WAITING_BASELINE,
                waiting_until=wait_until,
            )
        else:
            note = (
                ""
                if state is JobState.SUCCEEDED
                else f"; the baseline has no CT analysis result ({state.value if state else 'never analysed'})"
            )
            _record(database, job_id, PairingOutcome.PAIRED, choice.reason + note, baseline_uid=baseline_uid)
    else:
        _retrieve_or_go_without(settings, database, job_id, facts, choice.reason, therapy, wait_until, audit)


def _retrieve_or_go_without(settings, database, job_id, facts, reason, therapy, wait_until, audit) -> None:  # noqa: ANN001
    peer = settings.query_retrieve
    if peer is None or facts.study_date is None:
        _record(
            database,
            job_id,
            PairingOutcome.NO_BASELINE,
            f"{reason}; no query/retrieve peer configured" if peer is None else reason,
        )
        return
    rules = settings.pipelines.ct_radiomics.pairing
    earliest, latest = search_window(facts.study_date, rules)
    try:
        found = qr.find_studies(
            peer, settings.node.ae_title, facts.patient_id, facts.issuer_of_patient_id, earliest, latest, audit
        )
        remote = choose_baseline(facts, found, rules, therapy)
        if remote.kind is not PairingDecisionKind.PAIRED:
            _record(
                database,
                job_id,
                PairingOutcome.NO_BASELINE,
                f"{reason}; not at {peer.ae_title} either: {remote.reason}",
            )
            return
        status = qr.move_study(peer, settings.node.ae_title, remote.baseline.study_instance_uid, audit)
    except RetrieveError as error:
        _record(database, job_id, PairingOutcome.NO_BASELINE, f"{reason}; query/retrieve failed: {error}")
        return
    _record(
        database,
        job_id,
        PairingOutcome.RETRIEVING,
        f"{reason}; at {peer.ae_title}: {remote.reason}; C-MOVE {status}; "
        f"waiting until {wait_until:%Y-%m-%d %H:%M:%S} UTC",
        baseline_uid=remote.baseline.study_instance_uid,
        next_state=JobState.WAITING_BASELINE,
        waiting_until=wait_until,
    )


def _release_if_ready(database: Database, job_id: int, until: datetime | None) -> None:
    with database.session() as session:
        pairing = radiomics_store.latest_pairing(session, job_id)
        baseline_uid = pairing.baseline_study_uid if pairing else ""
        state = radiomics_store.study_ct_job_state(session, baseline_uid) if baseline_uid else None
        job = session.get(Job, job_id)
        followup = radiomics_store.study_facts(session, job.study.study_instance_uid)
        baseline = radiomics_store.study_facts(session, baseline_uid) if baseline_uid else None
    if state is JobState.SUCCEEDED and baseline is not None:
        same = (baseline.patient_id, baseline.issuer_of_patient_id) == (
            followup.patient_id,
            followup.issuer_of_patient_id,
        )
        if same:
            _record(
                database, job_id, PairingOutcome.PAIRED, f"baseline {baseline_uid} analysed", baseline_uid=baseline_uid
            )
        else:
            _record(
                database,
                job_id,
                PairingOutcome.NO_BASELINE,
                f"study {baseline_uid} arrived with PatientID {baseline.patient_id!r} issuer "
                f"{baseline.issuer_of_patient_id!r}, not the follow-up's: not paired",
            )
    elif state is JobState.FAILED:
        _record(
            database,
            job_id,
            PairingOutcome.PAIRED,
            f"baseline {baseline_uid} analysis failed; reported without delta features",
            baseline_uid=baseline_uid,
        )
    elif until is None or utcnow() >= until:
        what = "not analysed" if state else "not received"
        _record(
            database,
            job_id,
            PairingOutcome.TIMED_OUT,
            f"baseline {baseline_uid} {what} in time; reported without delta features",
            baseline_uid=baseline_uid,
        )
