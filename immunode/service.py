"""The running node: the SCP, the stages on their scheduler (`immunode.stages`) and the job runner, together."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta, timezone

from dicom_node.scp import StorageSCP
from dicom_node.stow_server import DicomWebServer
from immunode import flow
from immunode.config import ConfigError, Settings
from immunode.monitoring import MonitoringHooks, MonitoringServer, NodeMetrics, Readiness, index_answers
from immunode.reconcile import reconcile
from immunode.snapshot import StatusSnapshot, take_snapshot
from immunode.stages import Event, StageScheduler
from immunode.startup import StartupCheck, check_startup
from immunode.worker import JobRunner
from storage import deliveries, retention, runs
from storage.audit import AuditTrail
from storage.database import Database
from storage.errors import IndexOutage, StorageError
from storage.files import FileLayout
from storage.overview import StudyQuery
from storage.store import InstanceStore

logger = logging.getLogger(__name__)


class Node:
    """The running node: the SCP (and DICOMweb server) storing instances, the stages of `immunode.stages` on their
    scheduler (`self.stages`), started early by what happens here (an instance stored, a job finished, a delivery
    requeued), and the job runner with its engine."""

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
        self.layout = FileLayout(
            settings.storage.root, settings.storage.min_free_mb, settings.storage.private, settings.storage.fsync_folders
        )
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
            self.stored,
            self.metrics.observe,
            lambda: self.happened(Event.SENDER_DONE),
        )
        self.dicomweb = (
            DicomWebServer(
                settings.node.dicomweb,
                settings.node.ae_title,
                self.store,
                self.trail,
                checked.dicomweb_tls_context,
                self.stored,
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
        self.stages = StageScheduler(self)
        self.port: int | None = None
        self.tls_port: int | None = None
        self.run_id: int | None = None
        self._stopped = threading.Event()

    def happened(self, event: Event, at: datetime | None = None) -> None:
        """Start the stages `event` starts (now, or at `at`), unless they are due earlier anyway."""
        if not self._stopped.is_set():
            self.stages.happened(event, at)

    def stored(self, study_instance_uid: str) -> None:
        """An instance was stored: its study can be quiet `study_stable_s` from now (`annotation_stable_s` when
        it is an annotation on an analysed study; the route stage tells which)."""
        quiet = min(flow.quiet_times(self.settings))
        self.happened(Event.STORED, datetime.now(timezone.utc) + quiet + timedelta(seconds=0.05))

    def sending_studies(self) -> frozenset[str]:
        """Studies an open DICOM association is still sending (not complete yet, whatever their quiet time)."""
        return self.scp.sending_studies()

    def _job_finished(self, job_id: int) -> None:
        self.happened(Event.FINISHED)

    def start(self, port: int | None = None, tls_port: int | None = None) -> int | None:
        """Start-up: spooled records written, crash leftovers reconciled, interrupted jobs resumed, workers
        warmed if so configured (otherwise the first job starts them); then the scheduler and the SCP. Returns
        the plain DICOM port (None when only TLS listens)."""
        self.trail.flush_spool()
        retention.recover_interrupted(self.database, self.layout)  # before reconciling: files go back first
        self.run_id = reconcile(
            self.database, self.layout, self.store, self.settings.node.max_inflated_mb * 1024 * 1024
        )
        self.runner.run_id = self.layout.run_id = self.run_id
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
        self.stages.start()
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
        return self.stages.running and not self._stopped.is_set()

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

    def _retry_delivery(self, delivery_id: int) -> int:
        with self.database.session() as session:
            requeued = deliveries.requeue_dead_deliveries(session, [delivery_id])
        self.happened(Event.REQUEUED)
        return requeued

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
        self.stages.stop()
        try:
            self.runner.stop()
            self.runner.settle()  # outcomes the index has not been told yet
            if self.run_id is not None:
                with self.database.session() as session:
                    runs.end_run(session, self.run_id)
        except IndexOutage as error:
            logger.error("stop not recorded (%s): the next start takes this run's jobs back", error)
        self.database.dispose()
        if self._umask is not None:
            os.umask(self._umask)
        logger.info("node stopped")
