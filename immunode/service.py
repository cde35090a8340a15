"""The running node: SCP, scheduler (route, run, dispatch) and worker pool, started and stopped together."""

from __future__ import annotations

import logging
import os
import threading

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.dispatch import dispatch_due
from dicom_node.errors import TlsSetupError
from dicom_node.scp import StorageSCP
from dicom_node.tls import client_context, server_context
from immunode.config import ConfigError, Settings
from immunode.reconcile import reconcile
from models.ar_signature import load as load_ar_signature
from models.errors import ModelError
from models.serving import load_cytact, load_expression, load_fusion
from pipelines import flow
from pipelines.delta_radiomics import read_published_signature
from pipelines.errors import PipelineError
from pipelines.worker import JobRunner
from storage import runs
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.store import InstanceStore

logger = logging.getLogger(__name__)


def verify_model_weights(settings: Settings) -> None:
    """Refuse to start with configured weights that are missing or do not match their model card."""
    response = settings.pipelines.response
    for key, path, loader in (
        ("expression_weights", response.expression_weights, load_expression),
        ("fusion_weights", response.fusion_weights, load_fusion),
    ):
        if path is not None:
            try:
                card = loader(path)[-1]
            except ModelError as error:
                raise ConfigError(f"pipelines.response.{key}: {error}") from None
            logger.info("%s %s %s sha256 %s", key, card.name, card.version, card.sha256[:16])
    ct = settings.pipelines.ct_radiomics
    if ct.ar_signature is not None:
        try:
            card = load_ar_signature(ct.ar_signature)[1]
        except ModelError as error:
            raise ConfigError(f"pipelines.ct_radiomics.ar_signature: {error}") from None
        logger.info("ar_signature %s %s sha256 %s", card.name, card.version, card.sha256[:16])
    if ct.published_signature is not None:
        try:
            read_published_signature(ct.published_signature)
        except PipelineError as error:
            raise ConfigError(f"pipelines.ct_radiomics.published_signature: {error}") from None
    cytact = settings.pipelines.pet_quant.cytact
    if not cytact.enabled:
        return
    try:
        _, card = load_cytact(cytact.weights)
    except ModelError as error:
        raise ConfigError(f"pipelines.pet_quant.cytact.weights: {error}") from None
    logger.info(
        "CytAct weights %s %s sha256 %s%s",
        card.name,
        card.version,
        card.sha256[:16],
        " (SYNTHETIC demonstration weights)" if card.synthetic_training_data else "",
    )


def tls_server_context(settings: Settings):  # noqa: ANN201 - ssl.SSLContext | None
    """The SCP's TLS context, and every configured client TLS context checked, before anything listens."""
    for index, destination in enumerate(settings.destinations):
        if destination.tls is not None:
            try:
                client_context(destination.tls)
            except TlsSetupError as error:
                raise ConfigError(f"destinations.{index}.tls: {error}") from None
    if settings.query_retrieve is not None and settings.query_retrieve.tls is not None:
        try:
            client_context(settings.query_retrieve.tls)
        except TlsSetupError as error:
            raise ConfigError(f"query_retrieve.tls: {error}") from None
    if settings.node.tls is None:
        return None
    try:
        return server_context(settings.node.tls)
    except TlsSetupError as error:
        raise ConfigError(f"node.tls: {error}") from None


class Node:
    def __init__(self, settings: Settings) -> None:
        verify_model_weights(settings)
        tls_context = tls_server_context(settings)
        self.settings = settings
        self._umask = os.umask(0o077) if settings.storage.private else None
        self.layout = FileLayout(settings.storage.root, settings.storage.min_free_mb, settings.storage.private)
        self.database = Database(settings.database_url)
        self.trail = AuditTrail(self.database, self.layout.spool)
        self.store = InstanceStore(self.database, self.layout)
        self.scp = StorageSCP(settings.node, settings.peers, self.store, self.trail, tls_context)
        self.runner = JobRunner(settings, self.database)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.port: int | None = None
        self.tls_port: int | None = None
        self._run_id: int | None = None
        self._stopped = threading.Event()

    def _every(self, function, name: str) -> None:  # noqa: ANN001 - a zero-argument callable
        self.scheduler.add_job(
            function, "interval", seconds=self.settings.routing.poll_interval_s, id=name, max_instances=1, coalesce=True
        )

    def start(self, port: int | None = None, tls_port: int | None = None) -> int | None:
        """Start-up: spooled records written, crash leftovers reconciled, interrupted jobs resumed; then the
        scheduler and the SCP. Returns the plain DICOM port (None when only TLS listens)."""
        removed = self.layout.remove_stale_partials()
        self.trail.flush_spool()
        self._run_id = reconcile(
            self.database, self.layout, self.store, self.settings.node.max_inflated_mb * 1024 * 1024
        )
        resumed = self.runner.resume_interrupted()
        if removed or resumed:
            logger.info("start-up: removed %d partial file(s), resumed %d interrupted job(s)", removed, resumed)
        self._every(self.route_once, "route")
        self._every(self.pair_once, "pair")
        self._every(self.run_once, "run")
        self._every(self.dispatch_once, "dispatch")
        self._every(self.trail.flush_spool, "spool")
        self.scheduler.start()
        self.port, self.tls_port = self.scp.start(port, tls_port)
        return self.port

    def route_once(self) -> None:
        flow.route_quiet_studies(self.settings, self.database)

    def pair_once(self) -> None:
        flow.pair_jobs(self.settings, self.database, self.trail.audit)

    def run_once(self) -> None:
        self.runner.submit_pending()

    def dispatch_once(self) -> None:
        dispatch_due(self.settings, self.database, self.layout, trail=self.trail)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.scp.stop()
        self.scheduler.shutdown(wait=True)
        self.runner.shutdown()
        if self._run_id is not None:
            with self.database.session() as session:
                runs.end_run(session, self._run_id)
        self.database.dispose()
        if self._umask is not None:
            os.umask(self._umask)
        logger.info("node stopped")
