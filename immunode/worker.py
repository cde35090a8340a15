"""Job execution in worker processes, so that a crash or runaway analysis never takes the SCP down.

The workers start with the first job (or with the node, `workers.warm_at_start`), import the analysis code
(PyTorch, SimpleITK, pyradiomics, highdicom) once, and each runs up to `JOBS_PER_WORKER` jobs before a fresh
one replaces it (warming as it starts). After `workers.idle_release_s` without a job the pool is returned,
so that an idle node holds no analysis process (`JobRunner.release_idle`); the next job starts it again.
Each job runs under its own CPU-time budget (`job_cpu_limit_s`, measured from the job's start) and the
worker under the address-space limit (`job_memory_limit_mb`); a worker killed
by a limit or a crash breaks only its pool, which is rebuilt, and the job is retried or failed with the
reason in the index. A worker exits when the node is gone (`common.processes.exit_with_parent`).

Stopping (`stop`): the workers are ended at once and the jobs they were running go back to the queue with
their attempt returned, to resume at the next start.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing import get_context

from sqlalchemy.orm import Session

from common.processes import descendants, exit_with_parent
from common.states import JobState
from immunode.config import Settings
from immunode.logging_setup import configure_logging
from storage import jobs, runs
from storage.database import Database
from storage.errors import ClaimLost, IndexOutage
from storage.events import record_event
from storage.files import FileLayout

logger = logging.getLogger(__name__)

JOBS_PER_WORKER = 25  # then a fresh worker: memory a long-lived analysis process accumulates is returned


def _warm(settings: Settings) -> None:
    """Initializer of each worker process: limits, logging, and the analysis code imported before any job."""
    exit_with_parent()
    configure_logging(settings.logging)
    if settings.workers.job_memory_limit_mb:
        size = settings.workers.job_memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    for pipeline in settings.registry.pipelines:
        pipeline.warm()


def _ready() -> bool:
    return True


def _worker_entry(settings: Settings, job_id: int) -> str:
    """One job in a warm worker process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = used + settings.workers.job_cpu_limit_s
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    return _run(settings, job_id)


def _dask_entry(settings: Settings, job_id: int) -> str:
    """One job on a Dask worker (a long-lived process of the cluster: no per-job CPU limit is set in it)."""
    configure_logging(settings.logging)
    return _run(settings, job_id)


def _run(settings: Settings, job_id: int) -> str:
    from immunode.jobs import run_job

    database = Database(settings.database_url, migrate=False)
    try:
        layout = FileLayout(settings.storage.root, settings.storage.min_free_mb)
        return run_job(settings, database, layout, job_id).value
    finally:
        database.dispose()


class DaskUnavailable(Exception):
    """The Dask scheduler cannot be reached: jobs stay queued."""


class DaskEngine:
    """Jobs as tasks of a Dask distributed cluster. The index stays the source of truth: a job is claimed there,
    submitted, and its result recorded there by the task itself. A worker that dies mid-task has the task
    rescheduled by the scheduler on another worker (up to the cluster's `allowed-failures`); past that the job
    is retried by the runner up to `max_attempts`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = None

    def client(self) -> object:
        from distributed import Client

        if self._client is not None and self._client.status == "running":
            return self._client
        if self._client is not None:
            self._client.close()
            self._client = None
        try:
            self._client = Client(
                self.settings.workers.dask_scheduler,
                timeout=self.settings.workers.dask_connect_timeout_s,
                set_as_default=False,
            )
        except (OSError, TimeoutError) as error:
            address = self.settings.workers.dask_scheduler
            raise DaskUnavailable(
                f"Dask scheduler {address} unreachable: {error.__class__.__name__}: {error}"
            ) from None
        return self._client

    def capacity(self) -> int:
        try:
            return sum(self.client().nthreads().values())
        except (OSError, TimeoutError) as error:
            raise DaskUnavailable(f"Dask scheduler {self.settings.workers.dask_scheduler}: {error}") from None

    def submit(self, job_id: int) -> object:
        return self.client().submit(
            _dask_entry, self.settings, job_id, key=f"immunode-job-{job_id}-{uuid.uuid4().hex[:8]}", pure=False
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class JobRunner:
    def __init__(
        self, settings: Settings, database: Database, on_finished: Callable[[int], None] | None = None
    ) -> None:
        self.settings = settings
        self.database = database
        self.on_finished = on_finished
        self.run_id: int | None = None  # the node run its claims are made for (set at start)
        self._lock = threading.Lock()
        self._running: dict[int, Future] = {}
        # Finished jobs whose outcome the index could not be told yet (it was unavailable): job -> what to record.
        self._unsettled: dict[int, Callable[[Session], object]] = {}
        self._settling = threading.Lock()
        self._stopping = False
        self.dask = DaskEngine(settings) if settings.workers.engine == "dask" else None
        self.unavailable = ""  # why jobs are not submitted now (the Dask scheduler unreachable), for status
        self._executor: ProcessPoolExecutor | None = None  # local engine: started by the first job
        self._last_busy = time.monotonic()  # when a job last ran (the idle release counts from it)

    def _pool(self) -> ProcessPoolExecutor:
        """The local worker pool, started when first needed (call with the lock held)."""
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.settings.workers.processes,
                mp_context=get_context("spawn"),
                initializer=_warm,
                initargs=(self.settings,),
                max_tasks_per_child=JOBS_PER_WORKER,
            )
            logger.info("worker pool started (%d process(es))", self.settings.workers.processes)
        return self._executor

    def warm_up(self) -> None:
        """With `workers.warm_at_start`: start the workers now, so that they have imported the analysis code
        before the first job."""
        if self.dask is not None or not self.settings.workers.warm_at_start:
            return  # Dask workers are the cluster's; otherwise the first job starts them
        with self._lock:
            self._last_busy = time.monotonic()
            pool = self._pool()
            for _ in range(self.settings.workers.processes):
                pool.submit(_ready)

    @property
    def started(self) -> bool:
        """Whether local worker processes are started (what an idle node should not hold)."""
        with self._lock:
            return self._executor is not None

    def release_idle(self) -> bool:
        """Return the worker processes when no job ran for `workers.idle_release_s`; True when it did."""
        idle_s = self.settings.workers.idle_release_s
        with self._lock:
            if self._executor is None or self._running or self._stopping or not idle_s:
                return False
            if time.monotonic() - self._last_busy < idle_s:
                return False
            executor, self._executor = self._executor, None
        executor.shutdown(wait=True, cancel_futures=True)
        logger.info("worker pool returned after %.0f s without a job", idle_s)
        return True

    def resume_interrupted(self) -> int:
        """Jobs an earlier run of this node left running go back to the queue; those of another live node
        sharing the index (its run's heartbeat is fresh) are left to it."""
        with self.database.session() as session:
            alive = runs.live_runs(session) - ({self.run_id} if self.run_id is not None else set())
            return jobs.reset_interrupted_jobs(session, self.settings.workers.max_attempts, alive)

    def submit_pending(self) -> list[int]:
        self.settle()
        with self._lock:
            if self._stopping:
                return []
            try:
                capacity = self.dask.capacity() if self.dask is not None else self.settings.workers.processes
            except DaskUnavailable as error:
                self._unavailable(str(error))
                return []
            self._unavailable("")
            free = capacity - len(self._running)
            if free <= 0:
                return []
            with self.database.session() as session:
                specs = jobs.claim_pending_jobs(session, free, self.run_id)
            if specs:
                self._last_busy = time.monotonic()
            for spec in specs:
                logger.info("job %d (%s) for study %s started", spec.job_id, spec.pipeline, spec.study_instance_uid)
                if self.dask is not None:
                    future = self.dask.submit(spec.job_id)
                    self._running[spec.job_id] = future
                    future.add_done_callback(partial(self._finished, spec.job_id))
                    continue
                try:
                    future = self._pool().submit(_worker_entry, self.settings, spec.job_id)
                except (BrokenProcessPool, RuntimeError):
                    self._executor = None
                    future = self._pool().submit(_worker_entry, self.settings, spec.job_id)
                self._running[spec.job_id] = future
                future.add_done_callback(partial(self._finished, spec.job_id))
            return [spec.job_id for spec in specs]

    def _unavailable(self, reason: str) -> None:
        """Record (once per change) why jobs are not submitted; `immunode status` and the status page show it."""
        if reason == self.unavailable:
            return
        self.unavailable = reason
        if reason:
            logger.error("jobs stay queued: %s", reason)
        with self.database.session() as session:
            record_event(session, "ERROR" if reason else "INFO", reason or "Dask scheduler reachable again")

    def _finished(self, job_id: int, future: Future) -> None:
        if self._stopping or future.cancelled():
            with self._lock:
                self._running.pop(job_id, None)
                self._last_busy = time.monotonic()
            return  # stop() puts the job back in the queue
        error = future.exception()
        settle = self._outcome(job_id, error)
        with self._lock:  # at once: no moment where the job is RUNNING for this run and tracked by neither
            self._running.pop(job_id, None)
            self._last_busy = time.monotonic()
            if settle is not None:
                self._unsettled[job_id] = settle
        if settle is not None:
            try:
                self.settle()
            except IndexOutage:
                pass  # logged once by the index's health; settled at the next poll
        if self.on_finished is not None:
            self.on_finished(job_id)

    def _outcome(self, job_id: int, error: BaseException | None) -> Callable[[Session], object] | None:
        """What the index must still be told of a finished job (None: its worker recorded it)."""
        if error is None:
            logger.info("job %d finished", job_id)
            return None
        if isinstance(error, ClaimLost):
            return None  # taken back by another node, which runs it; logged by the worker
        if isinstance(error, IndexOutage):
            logger.warning(
                "job %d: outcome not recorded (index unavailable): back to the queue when it answers", job_id
            )
            why = "handed back to the queue: its outcome could not be recorded while the index was unavailable"
            return partial(jobs.return_interrupted_jobs, job_ids=[job_id], run_id=self.run_id, why=why)
        if error.__class__.__name__ == "KilledWorker":
            reason = f"Dask workers died running it ({error})"
        elif isinstance(error, BrokenProcessPool):
            reason = "worker process died (killed by the CPU-time or memory limit, or crashed)"
            with self._lock:
                if self._executor is not None:
                    self._executor.shutdown(wait=False, cancel_futures=False)
                self._executor = None  # a fresh pool for the next job
        else:
            reason = f"{error.__class__.__name__}: {error}"
        logger.error("job %d: %s", job_id, reason)

        def requeue_or_fail(session: Session) -> None:
            state = jobs.requeue_job_or_fail(session, job_id, reason, self.settings.workers.max_attempts, self.run_id)
            if state is JobState.FAILED:
                logger.error("job %d failed for good", job_id)

        return requeue_or_fail

    def settle(self) -> None:
        """Outcomes of finished jobs that the index could not be told yet, told now (IndexOutage while it still
        cannot be reached: the next poll tries again)."""
        with self._settling:  # one at a time: an outcome is told once
            with self._lock:
                waiting = list(self._unsettled.items())
            for job_id, settle in waiting:
                with self.database.session() as session:
                    settle(session)
                with self._lock:
                    self._unsettled.pop(job_id, None)

    def release_untracked(self) -> list[int]:
        """Jobs the index says this run is running but no worker of it runs (their outcome lost) go back to the
        queue: no job stays RUNNING without a live holder that actually runs it."""
        if self.run_id is None or self._stopping:
            return []
        with self._lock:
            tracked = set(self._running) | set(self._unsettled)
            with self.database.session() as session:
                released = jobs.release_untracked_jobs(
                    session, self.run_id, tracked, self.settings.workers.max_attempts
                )
        if released:
            logger.warning(
                "job(s) %s were running for this node in the index but not here: back to the queue", released
            )
        return released

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def stop(self, grace_s: float = 2.0) -> int:
        """End the workers now; the jobs they were running go back to the queue (attempt returned). Returns
        how many jobs were interrupted."""
        with self._lock:
            self._stopping = True
            interrupted = list(self._running)
            processes = list(getattr(self._executor, "_processes", {}).values())
            futures = list(self._running.values())
        if self.dask is not None:
            for future in futures:
                future.cancel()
            self.dask.close()
            if interrupted:
                with self.database.session() as session:
                    jobs.return_interrupted_jobs(session, interrupted, self.run_id)
                logger.info("stop: job(s) %s cancelled on the cluster, queued to resume", interrupted)
            return len(interrupted)
        # A worker's own children (a job's radiomics extraction processes) end with it once they run, but one
        # still importing its modules under load would outlive the node by seconds: ended with their worker.
        below = [pid for process in processes if process.is_alive() for pid in descendants(process.pid)]
        for process in processes:
            if process.is_alive():
                process.terminate()
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for process in processes:
            process.join(grace_s)
            if process.is_alive():
                process.kill()
                process.join(grace_s)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if interrupted:
            with self.database.session() as session:
                jobs.return_interrupted_jobs(session, interrupted, self.run_id)
            logger.info("stop: job(s) %s interrupted, queued to resume at the next start", interrupted)
        return len(interrupted)
