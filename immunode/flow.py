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
    dispatch  dicom_node.dispatch.dispatch_due   C-STORE to destinations, back-off, dead letters (scheduler)

The stages here (route, pair) run in the node's own process and import nothing heavy; analysis and report
(`immunode.jobs`, with PyTorch, SimpleITK, pyradiomics and highdicom) run in the worker processes only, so
that the node that answers scanners stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from common.states import JobState
from common.types import StudyFacts
from dicom_node import qr
from dicom_node.errors import RetrieveError
from dicom_node.settings import QueryRetrieveSettings
from immunode.config import Settings
from immunode.routing import route
from pipelines.errors import BaselineNotRetrieved
from pipelines.pairing import PairingDecision, decide_new, decide_waiting
from pipelines.registry import Pipeline
from storage import jobs, pairings, patients, studies
from storage.database import Database
from storage.schema import utcnow
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
        try:
            return qr.find_studies(
                self.settings,
                self.ae_title,
                followup.patient_id,
                followup.issuer_of_patient_id,
                earliest,
                latest,
                self.audit,
            )
        except RetrieveError as error:
            raise BaselineNotRetrieved(str(error)) from None

    def retrieve(self, study_instance_uid: str) -> str:
        try:
            return qr.move_study(self.settings, self.ae_title, study_instance_uid, self.audit)
        except RetrieveError as error:
            raise BaselineNotRetrieved(str(error)) from None


PAIRING_LEASE = timedelta(minutes=10)  # a query/retrieve of a baseline takes at most this long


def pair_jobs(settings: Settings, database: Database, audit: qr.Audit | None = None, run_id: int | None = None) -> None:
    """Pair stage: decide each new longitudinal job's baseline, and release waiting jobs whose baseline is
    ready or late. With `run_id`, the jobs are leased to this node run first (several nodes on one index)."""
    with database.session() as session:
        new = jobs.lease_jobs_in_state(session, JobState.PAIRING, run_id, PAIRING_LEASE)
        waiting = jobs.lease_jobs_in_state(session, JobState.WAITING_BASELINE, run_id, PAIRING_LEASE)
    finder = (
        QueryRetrievePeer(settings.query_retrieve, settings.node.ae_title, audit)
        if settings.query_retrieve is not None
        else None
    )
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
    settings: Settings, database: Database, job: WaitingJob, finder: QueryRetrievePeer | None
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
