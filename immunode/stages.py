"""The node's stages, in one table (`STAGES`): route → pair → analyse → dispatch, then the housekeeping ones.

Each stage is one pass (a function of the running node, `StageHost`), run on the scheduler every interval of its
setting, and earlier when an event the table names for it happens (`StageScheduler.happened`): an instance
stored starts the route stage when its study can be quiet, a routed study starts pairing and the analysis, a
finished job its dispatch, the next job and the pairing of any follow-up that waited for it. The interval
remains as the safety net and paces back-off retries.

Before the table: receive and store run on the SCP's threads (`dicom_node.scp`, `storage.store`), and each
stored instance is the event `STORED`. The analyse stage only claims jobs and hands them to the engine
(`workers.engine`: `immunode.engines.LocalEngine` or `DaskEngine`), where `immunode.jobs.run_job` analyses and
reports. One pass of a stage runs at a time (a tick while the previous pass still runs is skipped and coalesced,
and not logged: that is the design, not a fault), and a pass that finds the index unavailable waits for the
next tick (the outage is logged once, by the index's health).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from functools import partial
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from immunode import flow
from immunode.config import Settings
from immunode.worker import JobRunner
from storage import retention, runs, studies
from storage.audit import AuditTrail
from storage.database import Database
from storage.errors import IndexOutage
from storage.files import FileLayout
from storage.store import InstanceStore

logger = logging.getLogger(__name__)


class Stage(Enum):
    ROUTE = "route"
    PAIR = "pair"
    ANALYSE = "analyse"
    DISPATCH = "dispatch"
    SPOOL = "spool"
    RETENTION = "retention"
    HEARTBEAT = "heartbeat"
    WORKERS = "workers"


class Event(Enum):
    """What starts a stage before its interval is up."""

    STORED = "an instance stored"  # at the time its study can be quiet
    SENDER_DONE = "a sender's association ended"  # the study it was sending may now be complete
    NEXT_QUIET = "the next study's quiet time"  # after each route pass
    ROUTED = "a study routed"
    PAIRED = "a pair pass"
    FINISHED = "a job finished"
    REQUEUED = "a dead delivery requeued"  # from the status page
    RELEASED = "untracked jobs handed back"  # the index had them running for this run, no worker ran them
    TAKEN_BACK = "a dead node's claims taken back"  # its jobs or delivery leases


class StageHost(Protocol):
    """What a stage's pass reads of the running node (`immunode.service.Node`)."""

    settings: Settings
    database: Database
    layout: FileLayout
    store: InstanceStore
    trail: AuditTrail
    runner: JobRunner
    run_id: int | None

    def stored(self, study_instance_uid: str) -> None: ...

    def sending_studies(self) -> frozenset[str]: ...

    def happened(self, event: Event, at: datetime | None = None) -> None: ...


@dataclass(frozen=True)
class Interval:
    key: str  # the setting (or constant) it comes from
    seconds: Callable[[Settings], float | None]  # None: the stage is not scheduled


POLL = Interval("routing.poll_interval_s", lambda settings: settings.routing.poll_interval_s)
RETENTION = Interval(
    "storage.retention.interval_s",
    lambda settings: settings.storage.retention.interval_s if settings.storage.retention.enabled else None,
)
HEARTBEAT = Interval("storage.runs.HEARTBEAT_EVERY", lambda _: runs.HEARTBEAT_EVERY.total_seconds())


@dataclass(frozen=True)
class StageEntry:
    stage: Stage
    does: str  # what one pass does
    run: Callable[[StageHost], object]  # one pass
    interval: Interval
    early: frozenset[Event] = frozenset()  # the events that start it before its interval is up
    runs_on: str = "node"  # where its work runs: the node's scheduler thread, or the engine's workers


def route(node: StageHost) -> None:
    sending = node.sending_studies()
    if flow.route_quiet_studies(node.settings, node.database, sending):
        node.happened(Event.ROUTED)
    with node.database.session() as session:
        due = studies.next_quiet_due(session, *flow.quiet_times(node.settings), sending)
    if due is not None:
        node.happened(Event.NEXT_QUIET, due.replace(tzinfo=timezone.utc) + timedelta(seconds=0.05))


def pair(node: StageHost) -> None:
    flow.pair_jobs(node.settings, node.database, node.trail.audit, node.run_id, node.store, node.stored)
    node.happened(Event.PAIRED)


def analyse(node: StageHost) -> None:
    node.runner.submit_pending()


def dispatch(node: StageHost) -> None:
    flow.dispatch_due(node.settings, node.database, node.layout, trail=node.trail, run_id=node.run_id)


def spool(node: StageHost) -> None:
    node.trail.flush_spool()


def retain(node: StageHost) -> None:
    """Finish a purge a crash left, then purge what the policy says is due (by age, then by the disk watermark)."""
    retention.recover_interrupted(node.database, node.layout)
    retention.apply(node.settings.storage.retention, node.database, node.layout, node.store.deleting_series)


def heartbeat(node: StageHost) -> None:
    """This run is alive; outcomes of finished jobs the index missed are recorded, and jobs the index says this
    run is running but no worker of it runs go back to the queue. The claims and files in flight of sibling
    nodes that died are taken back too, once this node has itself reached the index for `runs.STALE_AFTER`
    (after an outage every live sibling's heartbeat is stale until it beats again)."""
    with node.database.session() as session:
        runs.heartbeat(session, node.run_id)
    node.runner.settle()
    if node.runner.release_untracked():
        node.happened(Event.RELEASED)
    if node.database.health.answering_for() < runs.STALE_AFTER.total_seconds():
        return
    with node.database.session() as session:
        taken, released = runs.release_claims_of_dead_runs(session, node.settings.workers.max_attempts)
        removed = node.layout.remove_leftovers(runs.live_runs(session))
    if removed:
        logger.warning("removed %d file(s) in flight of a node run that died", removed)
    if taken or released:
        logger.warning("took back %d job(s) and %d delivery lease(s) of a node that died", taken, released)
        node.happened(Event.TAKEN_BACK)


def release_workers(node: StageHost) -> None:
    node.runner.release_idle()


STAGES: tuple[StageEntry, ...] = (
    StageEntry(
        Stage.ROUTE,
        "completes each study quiet for `routing.study_stable_s` and no longer being sent by an open association, "
        "and queues its jobs by the routing rules",
        route,
        POLL,
        frozenset({Event.STORED, Event.SENDER_DONE, Event.NEXT_QUIET}),
    ),
    StageEntry(
        Stage.PAIR,
        "decides each new longitudinal job's baseline; releases waiting jobs whose baseline is ready or late",
        pair,
        POLL,
        frozenset({Event.ROUTED, Event.FINISHED}),
    ),
    StageEntry(
        Stage.ANALYSE,
        "claims queued jobs as the engine has room; each is analysed and reported (SEG, SR) by a worker",
        analyse,
        POLL,
        frozenset({Event.ROUTED, Event.PAIRED, Event.FINISHED, Event.RELEASED, Event.TAKEN_BACK}),
        runs_on="workers.engine",
    ),
    StageEntry(
        Stage.DISPATCH,
        "sends each destination's due results (C-STORE or STOW-RS), with back-off and dead letters",
        dispatch,
        POLL,
        frozenset({Event.FINISHED, Event.REQUEUED, Event.TAKEN_BACK}),
    ),
    StageEntry(Stage.SPOOL, "writes audit records spooled while the index was unavailable", spool, POLL),
    StageEntry(Stage.RETENTION, "purges what the retention policy says is due (when enabled)", retain, RETENTION),
    StageEntry(
        Stage.HEARTBEAT,
        "marks this run alive; settles lost outcomes; takes back the claims of dead nodes",
        heartbeat,
        HEARTBEAT,
    ),
    StageEntry(
        Stage.WORKERS, "returns the local worker processes after `workers.idle_release_s` idle", release_workers, POLL
    ),
)


class _StageStillRunning(logging.Filter):
    """A stage whose previous run has not finished is not started twice (max_instances=1, coalesced): that is the
    design, not a fault, so the scheduler's warning for each skipped tick is left out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_StageStillRunning())


def _index_permitting(stage: Callable[[], object]) -> None:
    """A scheduled stage, run on every tick: while the index cannot be reached it waits for the next tick (the
    outage is logged once, by the index's health, not as a traceback per tick)."""
    try:
        stage()
    except IndexOutage:
        return


class StageScheduler:
    """The table's stages on a background scheduler, for one node."""

    def __init__(self, host: StageHost, table: tuple[StageEntry, ...] = STAGES) -> None:
        self.host = host
        self.table = table
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._lock = threading.Lock()
        self._timed: dict[Stage, datetime] = {}  # the earliest timed start asked of each stage since its last pass

    def start(self) -> None:
        for stage in self.table:
            seconds = stage.interval.seconds(self.host.settings)
            if seconds is None:
                continue
            self.scheduler.add_job(
                partial(_index_permitting, partial(self.pass_once, stage.stage)),
                "interval",
                seconds=seconds,
                id=stage.stage.value,
                max_instances=1,
                coalesce=True,
            )
        self.scheduler.start()

    @property
    def running(self) -> bool:
        return self.scheduler.running

    def pass_once(self, stage: Stage) -> None:
        """One pass of `stage`, in this thread."""
        with self._lock:
            self._timed.pop(stage, None)
        next(e for e in self.table if e.stage is stage).run(self.host)

    def happened(self, event: Event, at: datetime | None = None) -> None:
        """Start (now, or at `at`) each stage the table starts on `event`, unless it is due earlier anyway."""
        for stage in self.table:
            if event in stage.early:
                self.kick(stage.stage, at)

    def kick(self, stage: Stage, at: datetime | None = None) -> None:
        """Run `stage` now (or at `at`), unless it is due earlier anyway. Timed starts asked of a stage since its
        last pass are coalesced: a later one than already asked changes nothing (an instance stored each few
        milliseconds does not move the scheduler each time)."""
        if not self.scheduler.running:
            return
        if at is not None:
            with self._lock:
                asked = self._timed.get(stage)
                if asked is not None and asked <= at:
                    return
                self._timed[stage] = at
        job = self.scheduler.get_job(stage.value)
        when = at or datetime.now(timezone.utc)
        if job is not None and (job.next_run_time is None or when < job.next_run_time):
            job.modify(next_run_time=when)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
