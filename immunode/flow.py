"""What the node's own stages do, one pass each: route (`route_quiet_studies`), pair (`pair_jobs`) and dispatch
(`dispatch_due`). The stages as a whole, in order with their intervals, the events that start them early and the
engine the analysis runs on, are the table in `immunode.stages`; receiving and storing happen on the SCP's
threads (`dicom_node.scp`, `storage.store`), the analysis and report in the workers (`immunode.jobs`).

These stages run in the node's own process and import nothing heavy; analysis and report (`immunode.jobs`, with
PyTorch, SimpleITK, pyradiomics and highdicom) run in the worker processes only, so that the node that answers
scanners stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.orm import Session

from common.states import JobState
from common.types import EarlierFollowUp, StudyFacts
from dicom_node import dicomweb, qr
from dicom_node.dispatch import send_batch
from dicom_node.errors import RetrieveError
from dicom_node.settings import DicomWebQueryRetrieveSettings, DispatchSettings, QueryRetrieveSettings
from dicom_node.types import SendResult
from immunode.config import Settings
from immunode.routing import route
from pipelines.errors import BaselineNotRetrieved
from pipelines.pairing import (
    PairingChoice,
    PairingDecision,
    assessments_coming,
    decide_new,
    decide_waiting,
    place_in_course,
)
from pipelines.registry import Pipeline
from storage import jobs, pairings, patients, studies
from storage.audit import AuditTrail
from storage.database import Database
from storage.deliveries import due_deliveries, record_delivery_attempt
from storage.files import FileLayout
from storage.schema import DeliveryState, utcnow
from storage.store import InstanceStore
from storage.types import ArrivalKind, DueDelivery, WaitingJob

logger = logging.getLogger(__name__)


def route_quiet_studies(settings: Settings, database: Database, sending: frozenset[str] = frozenset()) -> list[int]:
    """Route stage: complete every study quiet for the stability time, and not still being sent by an open
    association (`sending`), and queue its jobs."""
    with database.session() as session:
        quiet = studies.quiet_studies(session, *quiet_times(settings), sending)
    job_ids: list[int] = []
    for study in quiet:
        decisions = route(study, settings.routing.rules, settings.registry)
        own = study.arrival is ArrivalKind.OWN_RESULTS
        note = "only this node's own results came back: nothing re-run" if own else ""
        with database.session() as session:
            job_ids += studies.complete_study(session, study, [d.job() for d in decisions], note)
        logger.info(
            "study %s revision %d complete (%s): %d job(s)",
            study.study_instance_uid,
            study.revision,
            study.arrival.value,
            len(decisions),
        )
    return job_ids


def quiet_times(settings: Settings) -> tuple[timedelta, timedelta]:
    """How long a study must be quiet before it is routed: after images, and after only readers' annotations."""
    routing = settings.routing
    return timedelta(seconds=routing.study_stable_s), timedelta(seconds=routing.annotation_stable_s)


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
        decision = _decide_new(settings, database, job, finder)
        if decision is not None:
            _record(database, job, decision)
            _reassess_later_studies(settings, database, job)
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


@dataclass(frozen=True)
class _Course:
    """What the store holds about a study's patient, as the pairing decisions read it."""

    facts: StudyFacts
    candidates: list[StudyFacts]
    states: dict[str, JobState | None]  # the newest job of the pipeline of each candidate
    therapy: date | None
    recorded: list[EarlierFollowUp]  # follow-ups already paired with (or awaiting) a baseline

    def place(self, settings: Settings, pipeline: Pipeline) -> PairingChoice:
        """The study's place in its patient's course (its baseline, by study date)."""
        return place_in_course(
            self.facts,
            self.candidates,
            pipeline.pairing_settings(settings.pipelines),
            self.therapy,
            pipeline.modality,
            self.recorded,
        )


def _course(session: Session, facts: StudyFacts, pipeline: Pipeline) -> _Course:
    candidates = studies.candidate_studies(session, facts)
    return _Course(
        facts,
        candidates,
        {c.study_instance_uid: jobs.study_job_state(session, c.study_instance_uid, pipeline.name) for c in candidates},
        patients.therapy_start(session, facts),
        pairings.earlier_follow_ups(session, facts, pipeline.name),
    )


def _decide_new(
    settings: Settings, database: Database, job: WaitingJob, finder: QueryRetrievePeer | DicomWebPriorSource | None
) -> PairingDecision | None:
    """The new job's decision; None while a study of the patient dated before it is still arriving (its place in
    the patient's course is decided by study date once every earlier study is whole, whatever the arrival order)."""
    pipeline: Pipeline = settings.registry.get(job.pipeline)
    with database.session() as session:
        facts = studies.study_facts(session, job.study_instance_uid)
        if studies.arriving_before(session, facts):
            return None
        course = _course(session, facts, pipeline)
        awaited = pairings.awaited_baseline(session, job.study_instance_uid, pipeline.name)
    return decide_new(
        facts,
        course.candidates,
        pipeline.pairing_settings(settings.pipelines),
        modality=pipeline.modality,
        now=utcnow(),
        therapy_start=course.therapy,
        awaited=awaited,
        analysis_state=course.states.get,
        finder=finder,
        follow_ups=course.recorded,
    )


FINISHED = (JobState.SUCCEEDED, JobState.FAILED)


def _reassess_later_studies(settings: Settings, database: Database, job: WaitingJob) -> list[int]:
    """A study placed in its patient's course may change the place of the patient's later studies analysed
    before it arrived (baseline, T1 and T2 sent days apart in any order): each whose baseline is now another
    is analysed again, as a new version of its report saying why."""
    pipeline: Pipeline = settings.registry.get(job.pipeline)
    requeued = []
    with database.session() as session:
        facts = studies.study_facts(session, job.study_instance_uid)
        if facts is None or facts.study_date is None:
            return []
        later = [
            c
            for c in studies.candidate_studies(session, facts)
            if (c.patient_id, c.issuer_of_patient_id) == (facts.patient_id, facts.issuer_of_patient_id)
            and c.study_date is not None
            and c.study_date > facts.study_date
            and jobs.study_job_state(session, c.study_instance_uid, pipeline.name) in FINISHED
        ]
        for study in sorted(later, key=lambda c: (c.study_date, c.study_instance_uid)):
            place = _course(session, study, pipeline).place(settings, pipeline)
            recorded = pairings.study_pairing(session, study.study_instance_uid, pipeline.name)
            before = recorded.baseline_study_uid if recorded is not None else ""
            if place.baseline is None or place.baseline.study_instance_uid == before:
                continue
            reason = (
                f"re-paired: study {facts.study_instance_uid} of {facts.study_date} arrived after this study's "
                f"analysis (baseline then: {before or 'none'}); now {place.reason}"
            )
            job_id = jobs.requeue_study(session, study.study_instance_uid, pipeline.name, reason)
            if job_id is not None:
                requeued.append(job_id)
                logger.info("job %d: %s", job_id, reason)
    return requeued


def _decide_waiting(settings: Settings, database: Database, job: WaitingJob) -> PairingDecision | None:
    """Released once the baseline and the earlier assessments of it are analysed (or the wait is over); the
    reason restates the follow-up's place in the course."""
    pipeline: Pipeline = settings.registry.get(job.pipeline)
    with database.session() as session:
        pairing = pairings.latest_pairing(session, job.job_id)
        baseline_uid = pairing.baseline_study_uid if pairing else ""
        state = jobs.study_job_state(session, baseline_uid, pipeline.name) if baseline_uid else None
        followup = studies.study_facts(session, job.study_instance_uid)
        baseline = studies.study_facts(session, baseline_uid) if baseline_uid else None
        course = _course(session, followup, pipeline)
    place = course.place(settings, pipeline)
    coming = assessments_coming(followup, baseline_uid, course.candidates, course.states.get, pipeline.modality)
    why = place.reason if place.baseline is not None and place.baseline.study_instance_uid == baseline_uid else ""
    return decide_waiting(followup, baseline_uid, baseline, state, job.waiting_until, utcnow(), coming, why)


def dispatch_due(
    settings: Settings,
    database: Database,
    layout: FileLayout,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
    run_id: int | None = None,
) -> int:
    """Dispatch stage: send every delivery due now, each destination's batch in one association (or STOW-RS
    request), and record each attempt: a failed one is tried again after the back-off, dead after
    `dispatch.max_attempts`. Returns how many were delivered. With `run_id` the deliveries are leased to this
    node run while they are sent (several nodes on one index)."""
    now = now or utcnow()
    lease = timedelta(seconds=4 * settings.dispatch.timeout_s + 60)
    with database.session() as session:
        batches = due_deliveries(session, layout, now, run_id, lease)
    by_name = {d.name: d for d in settings.destinations}
    delivered = 0
    for name, batch in batches.items():
        destination = by_name.get(name)
        if destination is None:
            results = [
                SendResult(d.sop_instance_uid, False, f"destination {name!r} is no longer configured") for d in batch
            ]
        else:
            sent = send_batch(destination, settings.node.ae_title, batch, settings.dispatch.timeout_s)
            results = list(sent.results)
            if sent.audit is not None and trail is not None:
                trail.audit(sent.audit)
        delivered += _record_attempts(settings.dispatch, database, name, batch, results, now)
    return delivered


def backoff_delay_s(attempts_made: int, initial_s: float, maximum_s: float) -> float:
    return min(initial_s * (2 ** max(attempts_made - 1, 0)), maximum_s)


def _record_attempts(
    settings: DispatchSettings,
    database: Database,
    name: str,
    batch: Sequence[DueDelivery],
    results: Sequence[SendResult],
    now: datetime,
) -> int:
    delivered = 0
    with database.session() as session:
        for d, result in zip(batch, results, strict=True):
            delay = backoff_delay_s(d.attempts + 1, settings.backoff_initial_s, settings.backoff_max_s)
            state = record_delivery_attempt(
                session,
                d.delivery_id,
                result.ok,
                result.detail,
                settings.max_attempts,
                now + timedelta(seconds=delay),
            )
            if state is DeliveryState.SENT:
                delivered += 1
                logger.info("delivered %s to %s (%s)", d.sop_instance_uid, name, result.detail)
            else:
                logger.warning(
                    "delivery %d of %s to %s failed (attempt %d): %s; now %s",
                    d.delivery_id,
                    d.sop_instance_uid,
                    name,
                    d.attempts + 1,
                    result.detail,
                    state.value,
                )
    return delivered
