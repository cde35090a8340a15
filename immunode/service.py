"""The running node: SCP, scheduler (route, run, dispatch) and worker pool, started and stopped together."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.dispatch import dispatch_due
from dicom_node.scp import StorageSCP
from dicom_node.stow_server import DicomWebServer
from immunode import flow
from immunode.config import ConfigError, Settings
from immunode.monitoring import MonitoringHooks, MonitoringServer, NodeMetrics, Readiness, index_answers
from immunode.reconcile import reconcile
from immunode.snapshot import StatusSnapshot, take_snapshot
from immunode.startup import StartupCheck, check_startup
from immunode.worker import JobRunner
from storage import deliveries, retention, runs, studies
from storage.audit import AuditTrail
from storage.database import Database
from storage.errors import IndexOutage, StorageError
from storage.files import FileLayout
from storage.overview import StudyQuery
from storage.store import InstanceStore

logger = logging.getLogger(__name__)


class _StageStillRunning(logging.Filter):
    """A stage whose previous run has not finished is not started twice (max_instances=1, coalesced): that is the
    design, not a fault, so the scheduler's warning for each skipped tick is left out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_StageStillRunning())


def _index_permitting(stage: Callable[[], object]) -> None:
    """A scheduled stage, run on every poll: while the index cannot be reached it waits for the next poll (the
    outage is logged once, by the index's health, not as a traceback per poll)."""
    try:
        stage()
    except IndexOutage:
        return


class Node:
    """The running node. Stages hand work on as events, not only on the poll: an instance stored schedules the
    study's completion check for when it can be quiet; a study routed or a job paired starts the job at
    once; a finished job starts its dispatch (and the next job, and the pairing of any follow-up that waited
    for it). The poll (`routing.poll_interval_s`) remains as the safety net and for back-off retries."""

    def __init__(self, settings: Settings, checked: StartupCheck | None = None) -> None:
        """`checked`: the start-up checks already run (`immunode serve` runs them with the ports); else they run
        here, without the ports (a port may be given to `start`)."""
        checked = checked or check_startup(settings, ports=False)
        checked.raise_problems()
        for note in checked.notes:
            logger.info("%s", note)
        for warning in checked.warnings:
            logger.warning("%s", warning)
        self.settings = settings
        self._umask = os.umask(0o077) if settings.storage.private else None
        self.layout = FileLayout(settings.storage.root, settings.storage.min_free_mb, settings.storage.private)
        self.database = Database(settings.database_url, migrations=settings.registry.migrations)
        self.trail = AuditTrail(self.database, self.layout.spool)
        self.store = InstanceStore(self.database, self.layout)
        self.metrics = NodeMetrics(self.database, self.layout.root)
        self.scp = StorageSCP(
            settings.node,
            settings.peers,
            self.store,
            self.trail,
            checked.tls_context,
            self._stored,
            self.metrics.observe,
        )
        self.dicomweb = (
            DicomWebServer(
                settings.node.dicomweb,
                settings.node.ae_title,
                self.store,
                self.trail,
                checked.dicomweb_tls_context,
                self._stored,
                self.metrics.observe,
                settings.node.max_inflated_mb * 1024 * 1024,
            )
            if settings.node.dicomweb is not None
            else None
        )
        self.dicomweb_port: int | None = None
        self.monitoring = (
            MonitoringServer(
                settings.monitoring,
                MonitoringHooks(self.metrics, self.snapshot, self.alive, self.readiness, self._retry_delivery),
            )
            if settings.monitoring.enabled
            else None
        )
        self.monitoring_port: int | None = None
        self.runner = JobRunner(settings, self.database, on_finished=self._job_finished)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.port: int | None = None
        self.tls_port: int | None = None
        self._run_id: int | None = None
        self._stopped = threading.Event()
        self._route_due: datetime | None = None
        self._route_lock = threading.Lock()

    def _every(self, function: Callable[[], object], name: str, seconds: float | None = None) -> None:
        self.scheduler.add_job(
            partial(_index_permitting, function),
            "interval",
            seconds=seconds or self.settings.routing.poll_interval_s,
            id=name,
            max_instances=1,
            coalesce=True,
        )

    def _kick(self, name: str, at: datetime | None = None) -> None:
        """Run stage `name` now (or at `at`), unless it is due earlier anyway."""
        if self._stopped.is_set() or not self.scheduler.running:
            return
        job = self.scheduler.get_job(name)
        when = at or datetime.now(timezone.utc)
        if job is not None and (job.next_run_time is None or when < job.next_run_time):
            job.modify(next_run_time=when)

    def _stored(self, study_instance_uid: str) -> None:
        """An instance was stored: its study can be quiet `study_stable_s` from now (`annotation_stable_s` when
        it is an annotation on an analysed study; the route stage tells which)."""
        quiet = min(flow.quiet_times(self.settings))
        due = datetime.now(timezone.utc) + quiet + timedelta(seconds=0.05)
        with self._route_lock:
            if self._route_due is not None and self._route_due <= due:
                return
            self._route_due = due
        self._kick("route", due)

    def _job_finished(self, job_id: int) -> None:
        self._kick("dispatch")
        self._kick("run")
        self._kick("pair")

    def start(self, port: int | None = None, tls_port: int | None = None) -> int | None:
        """Start-up: spooled records written, crash leftovers reconciled, interrupted jobs resumed, workers
        warmed if so configured (otherwise the first job starts them); then the scheduler and the SCP. Returns
        the plain DICOM port (None when only TLS listens)."""
        self.trail.flush_spool()
        retention.recover_interrupted(self.database, self.layout)  # before reconciling: files go back first
        self._run_id = reconcile(
            self.database, self.layout, self.store, self.settings.node.max_inflated_mb * 1024 * 1024
        )
        self.runner.run_id = self.layout.run_id = self._run_id
        with self.database.session() as session:
            removed = self.layout.remove_leftovers(runs.live_runs(session))
        resumed = self.runner.resume_interrupted()
        if removed or resumed:
            logger.info(
                "start-up: removed %d file(s) in flight of runs no longer alive, resumed %d interrupted job(s)",
                removed,
                resumed,
            )
        self.runner.warm_up()
        self._every(self.route_once, "route")
        self._every(self.pair_once, "pair")
        self._every(self.run_once, "run")
        self._every(self.dispatch_once, "dispatch")
        self._every(self.trail.flush_spool, "spool")
        if self.settings.storage.retention.enabled:
            self._every(self.retain_once, "retention", self.settings.storage.retention.interval_s)
        self._every(self.heartbeat_once, "heartbeat", runs.HEARTBEAT_EVERY.total_seconds())
        self._every(self.runner.release_idle, "workers")  # worker processes returned after their idle period
        self.scheduler.start()
        self.port, self.tls_port = self.scp.start(port, tls_port)
        if self.dicomweb is not None:
            try:
                self.dicomweb_port = self.dicomweb.start()
            except OSError as error:
                self.stop()
                web = self.settings.node.dicomweb
                where = f"{web.host}:{web.port}"  # type: ignore[union-attr]
                raise ConfigError(f"node.dicomweb.port: cannot listen on {where}: {error.strerror}") from None
        if self.monitoring is not None:
            try:
                self.monitoring_port = self.monitoring.start()
            except OSError as error:
                self.stop()
                raise ConfigError(
                    f"monitoring.port: cannot listen on {self.settings.monitoring.host}:"
                    f"{self.settings.monitoring.port}: {error.strerror}"
                ) from None
        return self.port

    def alive(self) -> bool:
        """Liveness: the stages' scheduler runs and the node was not stopped."""
        return self.scheduler.running and not self._stopped.is_set()

    def readiness(self) -> Readiness:
        """Readiness: listening for DICOM, the index answers, the storage root has its reserve."""
        reasons = []
        if self.port is None and self.tls_port is None:
            reasons.append("DICOM: not listening")
        if self.dicomweb is not None and self.dicomweb_port is None:
            reasons.append("DICOMweb: not listening")
        problem = index_answers(self.database)
        if problem:
            reasons.append(problem)
        try:
            self.layout.check_free_space(0)
        except StorageError as error:
            reasons.append(f"storage: {error}")
        if not self.alive():
            reasons.append("stopped")
        return Readiness(not reasons, tuple(reasons))

    def snapshot(self, query: StudyQuery) -> StatusSnapshot:
        """The status page's reading of the index and the disk."""
        return take_snapshot(self.settings, self.database, query)

    def retain_once(self) -> None:
        """Retention: finish a purge a crash left, then purge what the policy says is due (by age, then by the
        disk watermark)."""
        retention.recover_interrupted(self.database, self.layout)
        retention.apply(self.settings.storage.retention, self.database, self.layout, self.store.deleting_series)

    def _retry_delivery(self, delivery_id: int) -> int:
        with self.database.session() as session:
            requeued = deliveries.requeue_dead_deliveries(session, [delivery_id])
        self._kick("dispatch")
        return requeued

    def route_once(self) -> None:
        with self._route_lock:
            self._route_due = None
        if flow.route_quiet_studies(self.settings, self.database):
            self._kick("pair")
            self._kick("run")
        with self.database.session() as session:
            due = studies.next_quiet_due(session, *flow.quiet_times(self.settings))
        if due is not None:
            at = due.replace(tzinfo=timezone.utc) + timedelta(seconds=0.05)
            with self._route_lock:
                self._route_due = at
            self._kick("route", at)

    def heartbeat_once(self) -> None:
        """This run is alive; outcomes of finished jobs the index missed are recorded, and jobs the index says this
        run is running but no worker of it runs go back to the queue. The claims and files in flight of sibling
        nodes that died are taken back too, once this node has itself reached the index for `runs.STALE_AFTER`
        (after an outage every live sibling's heartbeat is stale until it beats again)."""
        with self.database.session() as session:
            runs.heartbeat(session, self._run_id)
        self.runner.settle()
        if self.runner.release_untracked():
            self._kick("run")
        if self.database.health.answering_for() < runs.STALE_AFTER.total_seconds():
            return
        with self.database.session() as session:
            taken, released = runs.release_claims_of_dead_runs(session, self.settings.workers.max_attempts)
            removed = self.layout.remove_leftovers(runs.live_runs(session))
        if removed:
            logger.warning("removed %d file(s) in flight of a node run that died", removed)
        if taken or released:
            logger.warning("took back %d job(s) and %d delivery lease(s) of a node that died", taken, released)
            self._kick("run")
            self._kick("dispatch")

    def pair_once(self) -> None:
        flow.pair_jobs(self.settings, self.database, self.trail.audit, self._run_id, self.store, self._stored)
        self._kick("run")

    def run_once(self) -> None:
        self.runner.submit_pending()

    def dispatch_once(self) -> None:
        dispatch_due(
            self.settings.node.ae_title,
            self.settings.destinations,
            self.settings.dispatch,
            self.database,
            self.layout,
            trail=self.trail,
            run_id=self._run_id,
        )

    def stop(self) -> None:
        """Stop listening (open associations aborted), stop the stages, end the workers (their jobs queued to
        resume), record the clean stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.monitoring is not None:
            self.monitoring.stop()
        if self.dicomweb is not None:
            self.dicomweb.stop()
        self.scp.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        try:
            self.runner.stop()
            self.runner.settle()  # outcomes the index has not been told yet
            if self._run_id is not None:
                with self.database.session() as session:
                    runs.end_run(session, self._run_id)
        except IndexOutage as error:
            logger.error("stop not recorded (%s): the next start takes this run's jobs back", error)
        self.database.dispose()
        if self._umask is not None:
            os.umask(self._umask)
        logger.info("node stopped")
