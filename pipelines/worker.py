"""Job execution in worker processes, so that a crash or runaway analysis never takes the SCP down.

Each job runs in a fresh spawned process (max_tasks_per_child=1) under CPU-time and address-space
limits; a killed or crashed worker breaks only its pool, which is rebuilt, and the job is retried or
failed with the reason in the index.
"""

from __future__ import annotations

import logging
import resource
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing import get_context

from immunode.config import Settings
from immunode.logging_setup import configure_logging
from pipelines import flow
from storage import index
from storage.database import Database
from storage.files import FileLayout
from storage.schema import JobState

logger = logging.getLogger(__name__)


def _worker_entry(settings: Settings, job_id: int) -> str:
    """Entry point of a worker process."""
    configure_logging(settings.logging)
    limits = settings.workers
    resource.setrlimit(resource.RLIMIT_CPU, (limits.job_cpu_limit_s, limits.job_cpu_limit_s + 5))
    if limits.job_memory_limit_mb:
        size = limits.job_memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    database = Database(settings.database_url, migrate=False)
    try:
        layout = FileLayout(settings.storage.root, settings.storage.min_free_mb)
        try:
            return flow.run_job(settings, database, layout, job_id).value
        except Exception as error:
            # A deterministic failure of the analysis (a bug, data it cannot handle): the job fails with the
            # reason, the traceback goes to the log; retrying would fail the same way. Only a worker that
            # dies (killed, out of memory, CPU limit) is retried, by the runner.
            logger.exception("job %d: unexpected error in the pipeline", job_id)
            reason = f"unexpected error in the pipeline: {error.__class__.__name__}: {error} (traceback in the log)"
            with database.session() as session:
                index.finish_job(session, job_id, JobState.FAILED, reason[:2000])
            return JobState.FAILED.value
    finally:
        database.dispose()


class JobRunner:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self._lock = threading.Lock()
        self._running: dict[int, Future] = {}
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.settings.workers.processes, mp_context=get_context("spawn"), max_tasks_per_child=1
        )

    def resume_interrupted(self) -> int:
        with self.database.session() as session:
            return index.reset_interrupted_jobs(session, self.settings.workers.max_attempts)

    def submit_pending(self) -> list[int]:
        with self._lock:
            free = self.settings.workers.processes - len(self._running)
            if free <= 0:
                return []
            with self.database.session() as session:
                specs = index.claim_pending_jobs(session, free)
            for spec in specs:
                logger.info("job %d (%s) for study %s started", spec.job_id, spec.pipeline, spec.study_instance_uid)
                try:
                    future = self._executor.submit(_worker_entry, self.settings, spec.job_id)
                except BrokenProcessPool:
                    self._executor = self._new_executor()
                    future = self._executor.submit(_worker_entry, self.settings, spec.job_id)
                self._running[spec.job_id] = future
                future.add_done_callback(partial(self._finished, spec.job_id))
            return [spec.job_id for spec in specs]

    def _finished(self, job_id: int, future: Future) -> None:
        with self._lock:
            self._running.pop(job_id, None)
        error = future.exception()
        if error is None:
            logger.info("job %d finished: %s", job_id, future.result())
            return
        if isinstance(error, BrokenProcessPool):
            reason = "worker process died (killed by the CPU-time or memory limit, or crashed)"
            with self._lock:
                self._executor.shutdown(wait=False, cancel_futures=False)
                self._executor = self._new_executor()
        else:
            reason = f"{error.__class__.__name__}: {error}"
        logger.error("job %d: %s", job_id, reason)
        with self.database.session() as session:
            state = index.requeue_job_or_fail(session, job_id, reason, self.settings.workers.max_attempts)
        if state is JobState.FAILED:
            logger.error("job %d failed for good", job_id)

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
