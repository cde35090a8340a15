"""The whole path of a study through the node, in one place:

    receive   dicom_node.scp.StorageSCP          C-ECHO / C-STORE from allowed peers (SCP threads)
    store     storage.store.InstanceStore        fsync'd file + committed index row, then status 0x0000
    route     route_quiet_studies()              studies quiet for the stability time → jobs, by the rules and
                                                 the registry (scheduler)
    pair      pair_jobs()                        jobs of longitudinal pipelines: their baseline decided by
                                                 `pipelines.pairing` over facts from the store, with the
                                                 query/retrieve peer passed in (scheduler)
    analyse   immunode.jobs.run_job()            the job's pipeline: `analyse` → its typed result (worker process)
    report    immunode.jobs.run_job()            the pipeline's `report` → validated SEG + TID 1500 SR
    dispatch  dicom_node.dispatch.dispatch_due   C-STORE or STOW-RS to destinations, back-off, dead letters
                                                 (scheduler)

The stages here (route, pair) run in the node's own process and import nothing heavy; analysis and report
(`immunode.jobs`, with PyTorch, SimpleITK, pyradiomics and highdicom) run in the worker processes only, so
that the node that answers scanners stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from common.states import JobState
from common.types import StudyFacts
from dicom_node import dicomweb, qr
from dicom_node.errors import RetrieveError
from dicom_node.settings import DicomWebQueryRetrieveSettings, QueryRetrieveSettings
from immunode.config import Settings
from immunode.routing import route
from pipelines.errors import BaselineNotRetrieved
from pipelines.pairing import PairingDecision, decide_new, decide_waiting
from pipelines.registry import Pipeline
from storage import jobs, pairings, patients, studies
from storage.database import Database
from storage.files import FileLayout
from storage.schema import utcnow
from storage.store import InstanceStore
from storage.types import WaitingJob

logger = logging.getLogger(__name__)


def route_quiet_studies(settings: Settings, database: Database) -> list[int]:
    """Route stage: complete every study quiet for the stability time and queue its jobs."""
    with database.session() as session:
        quiet = studies.quiet_studies(session, timedelta(seconds=settings.routing.study_stable_s))
    job_ids: list[int] = []
    for study in quiet:
        decisions = route(study, settings.routing.rules, settings.registry)
        with database.session() as session:
            job_ids += studies.complete_study(session, study, [d.job() for d in decisions])
        logger.info(
            "study %s revision %d complete: %d job(s)", study.study_instance_uid, study.revision, len(decisions)
        )
    return job_ids


@dataclass(frozen=True)
class QueryRetrievePeer:
    """The configured query/retrieve peer as `pipelines.pairing` uses it (a `BaselineFinder`)."""

    settings: QueryRetrieveSettings
    ae_title: str  # ours: the calling AE title and the C-MOVE destination
    audit: qr.Audit | None = None

    @property
    def peer(self) -> str:
        return self.settings.ae_title

    def find(self, followup: StudyFacts, earliest: date, latest: date) -> Sequence[StudyFacts]:
        return _asked(qr.find_studies, self.settings, self.ae_title, followup, (earliest, latest), self.audit)

    def retrieve(self, study_instance_uid: str) -> str:
        try:
            return f"C-MOVE {qr.move_study(self.settings, self.ae_title, study_instance_uid, self.audit)}"
        except RetrieveError as error:
            raise BaselineNotRetrieved(str(error)) from None


def _asked(
    find_studies: Callable[..., list[StudyFacts]],
    peer: object,
    ae_title: str,
    followup: StudyFacts,
    window: tuple[date, date],
    audit: qr.Audit | None,
) -> list[StudyFacts]:
    """A prior source's studies of the follow-up's patient in the window; its failure as `BaselineNotRetrieved`."""
    try:
        return find_studies(peer, ae_title, followup.patient_id, followup.issuer_of_patient_id, *window, audit)
    except RetrieveError as error:
        raise BaselineNotRetrieved(str(error)) from None


@dataclass(frozen=True)
class DicomWebPriorSource:
    """The configured DICOMweb service as `pipelines.pairing` uses it (a `BaselineFinder`): QIDO-RS to find, WADO-RS
    to retrieve into this node's store (each instance checked as a C-STORE would be)."""

    settings: DicomWebQueryRetrieveSettings
    ae_title: str  # ours, in the audit trail
    store: InstanceStore
    max_inflated_bytes: int
    audit: qr.Audit | None = None
    on_stored: Callable[[str], None] | None = None

    @property
    def peer(self) -> str:
        return self.settings.name

    def find(self, followup: StudyFacts, earliest: date, latest: date) -> Sequence[StudyFacts]:
        return _asked(dicomweb.find_studies, self.settings, self.ae_title, followup, (earliest, latest), self.audit)

    def retrieve(self, study_instance_uid: str) -> str:
        try:
            return dicomweb.retrieve_study(
                self.settings,
                self.ae_title,
                study_instance_uid,
                self.store,
                self.max_inflated_bytes,
                self.audit,
                self.on_stored,
            )
        except RetrieveError as error:
            raise BaselineNotRetrieved(str(error)) from None


def baseline_finder(
    settings: Settings,
    database: Database,
    audit: qr.Audit | None = None,
    store: InstanceStore | None = None,
    on_stored: Callable[[str], None] | None = None,
) -> QueryRetrievePeer | DicomWebPriorSource | None:
    """The configured prior source: C-FIND/C-MOVE, QIDO-RS/WADO-RS (into `store`, or one on the configured
    storage root), or None."""
    peer = settings.query_retrieve
    if isinstance(peer, QueryRetrieveSettings):
        return QueryRetrievePeer(peer, settings.node.ae_title, audit)
    if isinstance(peer, DicomWebQueryRetrieveSettings):
        if store is None:
            store = InstanceStore(database, FileLayout(settings.storage.root, settings.storage.min_free_mb))
        limit = settings.node.max_inflated_mb * 1024 * 1024
        return DicomWebPriorSource(peer, settings.node.ae_title, store, limit, audit, on_stored)
    return None


PAIRING_LEASE = timedelta(minutes=10)  # a query/retrieve of a baseline takes at most this long


def pair_jobs(
    settings: Settings,
    database: Database,
    audit: qr.Audit | None = None,
    run_id: int | None = None,
    store: InstanceStore | None = None,
    on_stored: Callable[[str], None] | None = None,
) -> None:
    """Pair stage: decide each new longitudinal job's baseline, and release waiting jobs whose baseline is
    ready or late. With `run_id`, the jobs are leased to this node run first (several nodes on one index). A
    baseline retrieved by WADO-RS goes into `store` and `on_stored` is told its study."""
    with database.session() as session:
        new = jobs.lease_jobs_in_state(session, JobState.PAIRING, run_id, PAIRING_LEASE)
        waiting = jobs.lease_jobs_in_state(session, JobState.WAITING_BASELINE, run_id, PAIRING_LEASE)
    finder = baseline_finder(settings, database, audit, store, on_stored) if new else None
    for job in new:
        _record(database, job, _decide_new(settings, database, job, finder))
    for job in waiting:
        decision = _decide_waiting(settings, database, job)
        if decision is not None:
            _record(database, job, decision)


def _record(database: Database, job: WaitingJob, decision: PairingDecision) -> None:
    logger.info("job %d pairing %s: %s", job.job_id, decision.outcome.value, decision.reason)
    with database.session() as session:
        pairings.record_pairing(
            session,
            job.job_id,
            decision.outcome,
            decision.reason,
            decision.baseline_study_uid,
            decision.waiting_until,
        )


def _decide_new(
    settings: Settings, database: Database, job: WaitingJob, finder: QueryRetrievePeer | DicomWebPriorSource | None
) -> PairingDecision:
    pipeline: Pipeline = settings.registry.get(job.pipeline)
    with database.session() as session:
        facts = studies.study_facts(session, job.study_instance_uid)
        candidates = studies.candidate_studies(session, facts)
        therapy = patients.therapy_start(session, facts)
        awaited = pairings.awaited_baseline(session, job.study_instance_uid, pipeline.name)
        follow_ups = pairings.earlier_follow_ups(session, facts, pipeline.name)
        states = {
            c.study_instance_uid: jobs.study_job_state(session, c.study_instance_uid, pipeline.name) for c in candidates
        }
    return decide_new(
        facts,
        candidates,
        pipeline.pairing_settings(settings.pipelines),
        modality=pipeline.modality,
        now=utcnow(),
        therapy_start=therapy,
        awaited=awaited,
        analysis_state=states.get,
        finder=finder,
        follow_ups=follow_ups,
    )


def _decide_waiting(settings: Settings, database: Database, job: WaitingJob) -> PairingDecision | None:
    pipeline: Pipeline = settings.registry.get(job.pipeline)
    with database.session() as session:
        pairing = pairings.latest_pairing(session, job.job_id)
        baseline_uid = pairing.baseline_study_uid if pairing else ""
        state = jobs.study_job_state(session, baseline_uid, pipeline.name) if baseline_uid else None
        followup = studies.study_facts(session, job.study_instance_uid)
        baseline = studies.study_facts(session, baseline_uid) if baseline_uid else None
    return decide_waiting(followup, baseline_uid, baseline, state, job.waiting_until, utcnow())
