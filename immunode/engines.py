"""Where jobs run: an `Engine` takes a claimed job's id and runs it somewhere else than the node's own process,
so that a crash or runaway analysis never takes the SCP down. Chosen once, from `workers.engine`:

- `LocalEngine`: a pool of worker processes on this machine. They start with the first job (or with the node,
  `workers.warm_at_start`), import the analysis code (PyTorch, SimpleITK, pyradiomics, highdicom) once, and each
  runs up to `JOBS_PER_WORKER` jobs before a fresh one replaces it (warming as it starts). After
  `workers.idle_release_s` without a job the pool is returned, so that an idle node holds no analysis process;
  the next job starts it again. Each job runs under its own CPU-time budget (`job_cpu_limit_s`, from the job's
  start) and the worker under the address-space limit (`job_memory_limit_mb`); a worker killed by a limit or a
  crash breaks only its pool, which is replaced. A worker exits when the node is gone
  (`common.processes.exit_with_parent`).
- `DaskEngine`: tasks of a Dask distributed cluster (`workers.dask_scheduler`).

Either way the job itself claims nothing and decides nothing: `immunode.jobs.run_job` records its outcome in the
index; what the engine reports back (a worker died, the index could not be told) is handled by
`immunode.worker.JobRunner`.
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
from multiprocessing import get_context
from typing import Any, Protocol

from common.processes import descendants, exit_with_parent
from immunode.config import Settings
from immunode.errors import EngineUnavailable
from immunode.logging_setup import configure_logging
from storage.database import Database
from storage.files import FileLayout

logger = logging.getLogger(__name__)

JOBS_PER_WORKER = 25  # then a fresh worker: memory a long-lived analysis process accumulates is returned
STOP_GRACE_S = 2.0  # at the node's stop: how long a terminated worker is given before it is killed


class JobFuture(Protocol):
    """A submitted job as an engine hands it back (`concurrent.futures.Future`, `distributed.Future`)."""

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...

    def cancel(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


class Engine(Protocol):
    """What `JobRunner` needs of the place jobs run."""

    name: str  # in the events and the log: "local worker pool", "Dask scheduler"

    def capacity(self) -> int:
        """How many jobs may run at once; EngineUnavailable when the engine cannot be reached (jobs stay queued)."""
        ...

    def submit(self, job_id: int) -> JobFuture:
        """Run the (claimed) job; the future finishes when its outcome is recorded, or with why it could not be."""
        ...

    def warm(self) -> None:
        """At the node's start: start the workers now where so configured (else the first job starts them)."""
        ...

    def release_idle(self) -> bool:
        """Return the workers this node holds after their idle period; True when it did."""
        ...

    @property
    def started(self) -> bool:
        """Whether this node holds worker processes now (what an idle node should not)."""
        ...

    def worker_died(self, error: BaseException) -> str | None:
        """Why the job failed when its worker died under it (the job is retried); None for any other error."""
        ...

    def close(self) -> None:
        """The node stops: end the work at once (the runner queues the interrupted jobs to resume)."""
        ...


def engine_for(settings: Settings) -> Engine:
    """The engine `workers.engine` names."""
    return DaskEngine(settings) if settings.workers.engine == "dask" else LocalEngine(settings)


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


class LocalEngine:
    """Worker processes of this node (`workers.processes` of them), started when first needed."""

    name = "local worker pool"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._in_flight = 0  # jobs submitted and not finished
        self._last_busy = time.monotonic()  # when a job last ran (the idle release counts from it)
        self._closing = False

    def _pool(self) -> ProcessPoolExecutor:
        """The pool, started when first needed (call with the lock held)."""
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

    def capacity(self) -> int:
        return self.settings.workers.processes

    def submit(self, job_id: int) -> Future:
        with self._lock:
            self._last_busy = time.monotonic()
            try:
                future = self._pool().submit(_worker_entry, self.settings, job_id)
            except (BrokenProcessPool, RuntimeError):
                self._executor = None
                future = self._pool().submit(_worker_entry, self.settings, job_id)
            self._in_flight += 1
            executor = self._executor
        future.add_done_callback(lambda done: self._done(executor, done))
        return future

    def _done(self, executor: ProcessPoolExecutor | None, future: Future) -> None:
        broken = not future.cancelled() and isinstance(future.exception(), BrokenProcessPool)
        with self._lock:
            self._in_flight -= 1
            self._last_busy = time.monotonic()
            if broken and executor is not None and executor is self._executor:
                self._executor = None  # a fresh pool for the next job
            else:
                broken = False
        if broken:
            executor.shutdown(wait=False, cancel_futures=False)  # type: ignore[union-attr]

    def warm(self) -> None:
        """With `workers.warm_at_start`: start the workers now, so that they have imported the analysis code
        before the first job."""
        if not self.settings.workers.warm_at_start:
            return
        with self._lock:
            self._last_busy = time.monotonic()
            pool = self._pool()
            for _ in range(self.settings.workers.processes):
                pool.submit(_ready)

    @property
    def started(self) -> bool:
        with self._lock:
            return self._executor is not None

    def release_idle(self) -> bool:
        """Return the worker processes when no job ran for `workers.idle_release_s` (0: kept once started)."""
        idle_s = self.settings.workers.idle_release_s
        with self._lock:
            if self._executor is None or self._in_flight or self._closing or not idle_s:
                return False
            if time.monotonic() - self._last_busy < idle_s:
                return False
            executor, self._executor = self._executor, None
        executor.shutdown(wait=True, cancel_futures=True)
        logger.info("worker pool returned after %.0f s without a job", idle_s)
        return True

    def worker_died(self, error: BaseException) -> str | None:
        if isinstance(error, BrokenProcessPool):
            return "worker process died (killed by the CPU-time or memory limit, or crashed)"
        return None

    def close(self) -> None:
        with self._lock:
            self._closing = True
            executor = self._executor
        processes = list(getattr(executor, "_processes", {}).values())
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
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(STOP_GRACE_S)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


class DaskEngine:
    """Jobs as tasks of a Dask distributed cluster. The index stays the source of truth: a job is claimed there,
    submitted, and its result recorded there by the task itself. A worker that dies mid-task has the task
    rescheduled by the scheduler on another worker (up to the cluster's `allowed-failures`); past that the job
    is retried by the runner up to `max_attempts`. The workers are the cluster's: none to warm or release."""

    name = "Dask scheduler"
    started = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = None
        self._lock = threading.Lock()
        self._futures: set = set()  # submitted and not finished: cancelled at close

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
            raise EngineUnavailable(
                f"Dask scheduler {address} unreachable: {error.__class__.__name__}: {error}"
            ) from None
        return self._client

    def capacity(self) -> int:
        try:
            return sum(self.client().nthreads().values())  # type: ignore[attr-defined]
        except (OSError, TimeoutError) as error:
            raise EngineUnavailable(f"Dask scheduler {self.settings.workers.dask_scheduler}: {error}") from None

    def submit(self, job_id: int) -> JobFuture:
        future = self.client().submit(  # type: ignore[attr-defined]
            _dask_entry, self.settings, job_id, key=f"immunode-job-{job_id}-{uuid.uuid4().hex[:8]}", pure=False
        )
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: object) -> None:
        with self._lock:
            self._futures.discard(future)

    def warm(self) -> None:
        return None

    def release_idle(self) -> bool:
        return False

    def worker_died(self, error: BaseException) -> str | None:
        if error.__class__.__name__ == "KilledWorker":
            return f"Dask workers died running it ({error})"
        return None

    def close(self) -> None:
        with self._lock:
            futures, self._futures = list(self._futures), set()
        for future in futures:
            future.cancel()
        if self._client is not None:
            self._client.close()
            self._client = None
