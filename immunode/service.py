"""The running node: SCP, scheduler (route, run, dispatch) and worker pool, started and stopped together."""

from __future__ import annotations

import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.dispatch import dispatch_due
from dicom_node.scp import StorageSCP
from immunode.config import ConfigError, Settings
from models.ar_signature import load as load_ar_signature
from models.errors import ModelError
from models.serving import load_cytact, load_expression, load_fusion
from pipelines import flow
from pipelines.delta_radiomics import read_published_signature
from pipelines.errors import PipelineError
from pipelines.worker import JobRunner
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


class Node:
    def __init__(self, settings: Settings) -> None:
        verify_model_weights(settings)
        self.settings = settings
        self.layout = FileLayout(settings.storage.root, settings.storage.min_free_mb)
        self.database = Database(settings.database_url)
        self.store = InstanceStore(self.database, self.layout)
        self.scp = StorageSCP(settings.node, settings.peers, self.store)
        self.runner = JobRunner(settings, self.database)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.port: int | None = None
        self._stopped = threading.Event()

    def _every(self, function, name: str) -> None:  # noqa: ANN001 - a zero-argument callable
        self.scheduler.add_job(
            function, "interval", seconds=self.settings.routing.poll_interval_s, id=name, max_instances=1, coalesce=True
        )

    def start(self, port: int | None = None) -> int:
        removed = self.layout.remove_stale_partials()
        resumed = self.runner.resume_interrupted()
        if removed or resumed:
            logger.info("start-up: removed %d partial file(s), resumed %d interrupted job(s)", removed, resumed)
        self._every(self.route_once, "route")
        self._every(self.pair_once, "pair")
        self._every(self.run_once, "run")
        self._every(self.dispatch_once, "dispatch")
        self.scheduler.start()
        self.port = self.scp.start(port)
        return self.port

    def route_once(self) -> None:
        flow.route_quiet_studies(self.settings, self.database)

    def pair_once(self) -> None:
        flow.pair_jobs(self.settings, self.database)

    def run_once(self) -> None:
        self.runner.submit_pending()

    def dispatch_once(self) -> None:
        dispatch_due(self.settings, self.database, self.layout)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.scp.stop()
        self.scheduler.shutdown(wait=True)
        self.runner.shutdown()
        self.database.dispose()
        logger.info("node stopped")
