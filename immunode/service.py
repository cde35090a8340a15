"""The running node: SCP, scheduler (route, run, dispatch) and worker pool, started and stopped together."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.dicomweb import check_service
from dicom_node.dispatch import dispatch_due
from dicom_node.errors import SecretUnavailable, TlsSetupError
from dicom_node.scp import StorageSCP
from dicom_node.settings import DicomWebService
from dicom_node.stow_server import DicomWebServer
from dicom_node.tls import client_context, server_context
from immunode import flow
from immunode.config import ConfigError, Settings
from immunode.monitoring import MonitoringHooks, MonitoringServer, NodeMetrics, Readiness, index_answers
from immunode.reconcile import reconcile
from immunode.worker import JobRunner
from pipelines.errors import ConfigurationProblem
from storage import deliveries, runs, studies
from storage.audit import AuditTrail
from storage.database import Database
from storage.errors import StorageError
from storage.files import FileLayout
from storage.store import InstanceStore

logger = logging.getLogger(__name__)


def check_pipelines(settings: Settings) -> None:
    """Refuse to start when a pipeline's configuration names files that cannot be used (weights missing or not
    matching their model card, an unreadable signature table). Only hashes and tables are checked here (no
    PyTorch in the node's own process); the workers load the weights."""
    for pipeline in settings.registry.pipelines:
        try:
            lines = pipeline.check_configuration(settings.pipelines)
        except ConfigurationProblem as error:
            raise ConfigError(str(error)) from None
        for line in lines:
            logger.info("%s", line)


def _check_client_side(key: str, peer: object) -> None:
    """A destination's or the query/retrieve peer's TLS files (and, for DICOMweb, its secrets) can be used."""
    try:
        if isinstance(peer, DicomWebService):
            check_service(peer)
        elif peer.tls is not None:  # type: ignore[attr-defined]
            client_context(peer.tls)  # type: ignore[attr-defined]
    except TlsSetupError as error:
        raise ConfigError(f"{key}.tls: {error}") from None
    except SecretUnavailable as error:
        raise ConfigError(f"{key}.auth: {error}") from None


def dicomweb_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The DICOMweb endpoint's TLS context (checked before anything listens), None without TLS."""
    if settings.node.dicomweb is None or settings.node.dicomweb.tls is None:
        return None
    try:
        return server_context(settings.node.dicomweb.tls)
    except TlsSetupError as error:
        raise ConfigError(f"node.dicomweb.tls: {error}") from None


def tls_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The SCP's TLS context, and every configured client TLS context (and DICOMweb secret) checked, before
    anything listens."""
    for number, destination in enumerate(settings.destinations):
        _check_client_side(f"destinations.{number}", destination)
    if settings.query_retrieve is not None:
        _check_client_side("query_retrieve", settings.query_retrieve)
    if settings.node.tls is None:
        return None
    try:
        return server_context(settings.node.tls)
    except TlsSetupError as error:
        raise ConfigError(f"node.tls: {error}") from None


class Node:
    """The running node. Stages hand work on as events, not only on the poll: an instance stored schedules the
    study's completion check for when it can be quiet; a study routed or a job paired starts the job at
    once; a finished job starts its dispatch (and the next job, and the pairing of any follow-up that waited
    for it). The poll (`routing.poll_interval_s`) remains as the safety net and for back-off retries."""

    def __init__(self, settings: Settings) -> None:
        check_pipelines(settings)
        tls_context = tls_server_context(settings)
        web_tls_context = dicomweb_tls_context(settings)
        self.settings = settings
        self._umask = os.umask(0o077) if settings.storage.private else None
        self.layout = FileLayout(settings.storage.root, settings.storage.min_free_mb, settings.storage.private)
        self.database = Database(settings.database_url)
        self.trail = AuditTrail(self.database, self.layout.spool)
        self.store = InstanceStore(self.database, self.layout)
        self.metrics = NodeMetrics(self.database, self.layout.root)
        self.scp = StorageSCP(
            settings.node, settings.peers, self.store, self.trail, tls_context, self._stored, self.metrics.observe
        )
        self.dicomweb = (
            DicomWebServer(
                settings.node.dicomweb,
                settings.node.ae_title,
                self.store,
                self.trail,
                web_tls_context,
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
                MonitoringHooks(self.metrics, self.database, self.alive, self.readiness, self._retry_delivery),
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

    def _every(self, function: Callable[[], object], name: str) -> None:
        self.scheduler.add_job(
            function, "interval", seconds=self.settings.routing.poll_interval_s, id=name, max_instances=1, coalesce=True
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
        """An instance was stored: its study can be quiet `study_stable_s` from now."""
        due = datetime.now(timezone.utc) + timedelta(seconds=self.settings.routing.study_stable_s + 0.05)
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
        warmed; then the scheduler and the SCP. Returns the plain DICOM port (None when only TLS listens)."""
        removed = self.layout.remove_stale_partials()
        self.trail.flush_spool()
        self._run_id = reconcile(
            self.database, self.layout, self.store, self.settings.node.max_inflated_mb * 1024 * 1024
        )
        self.runner.run_id = self._run_id
        resumed = self.runner.resume_interrupted()
        if removed or resumed:
            logger.info("start-up: removed %d partial file(s), resumed %d interrupted job(s)", removed, resumed)
        self.runner.warm_up()
        self._every(self.route_once, "route")
        self._every(self.pair_once, "pair")
        self._every(self.run_once, "run")
        self._every(self.dispatch_once, "dispatch")
        self._every(self.trail.flush_spool, "spool")
        self.scheduler.add_job(
            self.heartbeat_once,
            "interval",
            seconds=runs.HEARTBEAT_EVERY.total_seconds(),
            id="heartbeat",
            max_instances=1,
            coalesce=True,
        )
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
        stable = timedelta(seconds=self.settings.routing.study_stable_s)
        with self.database.session() as session:
            due = studies.next_quiet_due(session, stable)
        if due is not None:
            at = due.replace(tzinfo=timezone.utc) + timedelta(seconds=0.05)
            with self._route_lock:
                self._route_due = at
            self._kick("route", at)

    def heartbeat_once(self) -> None:
        """This run is alive; the claims of sibling nodes that died go back to the queue."""
        with self.database.session() as session:
            runs.heartbeat(session, self._run_id)
            taken, released = runs.release_claims_of_dead_runs(session, self.settings.workers.max_attempts)
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
        self.runner.stop()
        if self._run_id is not None:
            with self.database.session() as session:
                runs.end_run(session, self._run_id)
        self.database.dispose()
        if self._umask is not None:
            os.umask(self._umask)
        logger.info("node stopped")
