"""The job runner: claims queued jobs in the index as its engine has room, hands them to the engine
(`immunode.engines`: local worker processes or a Dask cluster, chosen once from `workers.engine`), and tells the
index what the workers could not: a worker that died under a job (retried up to `workers.max_attempts`, then
failed with the reason), an outcome the index could not take (`workers.record_retry_s` ran out: the job goes
back to the queue when the index answers), a job the index says this run is running but no worker runs.

Stopping (`stop`): the engine ends its work at once and the jobs it was running go back to the queue with their
attempt returned, to resume at the next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

from sqlalchemy.orm import Session

from common.states import JobState
from immunode.config import Settings
from immunode.engines import Engine, JobFuture, engine_for
from immunode.errors import EngineUnavailable
from storage import jobs, runs
from storage.database import Database
from storage.errors import ClaimLost, IndexOutage
from storage.events import record_event

logger = logging.getLogger(__name__)


class JobRunner:
    """Jobs from the index's queue onto the engine, as it has room; their outcomes settled with the index."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        on_finished: Callable[[int], None] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.on_finished = on_finished
        self.engine = engine or engine_for(settings)
        self.run_id: int | None = None  # the node run its claims are made for (set at start)
        self._lock = threading.Lock()
        self._running: dict[int, JobFuture] = {}
        # Finished jobs whose outcome the index could not be told yet (it was unavailable): job -> what to record.
        self._unsettled: dict[int, Callable[[Session], object]] = {}
        self._settling = threading.Lock()
        self._stopping = False
        self.unavailable = ""  # why jobs are not submitted now (the engine unreachable), for status

    def warm_up(self) -> None:
        """At start: the engine's workers started now where so configured (`workers.warm_at_start`), so that
        they have imported the analysis code before the first job; otherwise the first job starts them."""
        self.engine.warm()

    @property
    def started(self) -> bool:
        """Whether worker processes of this node are started (what an idle node should not hold)."""
        return self.engine.started

    def release_idle(self) -> bool:
        """Return the worker processes when no job ran for `workers.idle_release_s`; True when it did."""
        if self._stopping:
            return False
        return self.engine.release_idle()

    def resume_interrupted(self) -> int:
        """Jobs an earlier run of this node left running go back to the queue; those of another live node
        sharing the index (its run's heartbeat is fresh) are left to it."""
        with self.database.session() as session:
            alive = runs.live_runs(session) - ({self.run_id} if self.run_id is not None else set())
            return jobs.reset_interrupted_jobs(session, self.settings.workers.max_attempts, alive)

    def submit_pending(self) -> list[int]:
        """Claim as many queued jobs as the engine has room for and hand them to it."""
        self.settle()
        with self._lock:
            if self._stopping:
                return []
            try:
                capacity = self.engine.capacity()
            except EngineUnavailable as error:
                self._unavailable(str(error))
                return []
            self._unavailable("")
            free = capacity - len(self._running)
            if free <= 0:
                return []
            with self.database.session() as session:
                specs = jobs.claim_pending_jobs(session, free, self.run_id)
            for spec in specs:
                logger.info("job %d (%s) for study %s started", spec.job_id, spec.pipeline, spec.study_instance_uid)
                self._running[spec.job_id] = self.engine.submit(spec.job_id)
            submitted = [(spec.job_id, self._running[spec.job_id]) for spec in specs]
        for job_id, future in submitted:  # tracked already; a future done by now calls back here, the lock free
            future.add_done_callback(partial(self._finished, job_id))
        return [job_id for job_id, _ in submitted]

    def _unavailable(self, reason: str) -> None:
        """Record (once per change) why jobs are not submitted; `immunode status` and the status page show it."""
        if reason == self.unavailable:
            return
        self.unavailable = reason
        if reason:
            logger.error("jobs stay queued: %s", reason)
        with self.database.session() as session:
            record_event(session, "ERROR" if reason else "INFO", reason or f"{self.engine.name} reachable again")

    def _finished(self, job_id: int, future: JobFuture) -> None:
        if self._stopping or future.cancelled():
            with self._lock:
                self._running.pop(job_id, None)
            return  # stop() puts the job back in the queue
        error = future.exception()
        settle = self._outcome(job_id, error)
        with self._lock:  # at once: no moment where the job is RUNNING for this run and tracked by neither
            self._running.pop(job_id, None)
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
        reason = self.engine.worker_died(error) or f"{error.__class__.__name__}: {error}"
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

    def stop(self) -> int:
        """End the work now; the jobs being run go back to the queue (attempt returned). Returns how many jobs
        were interrupted."""
        with self._lock:
            self._stopping = True
            interrupted = list(self._running)
        self.engine.close()
        if interrupted:
            with self.database.session() as session:
                jobs.return_interrupted_jobs(session, interrupted, self.run_id)
            logger.info(
                "stop: job(s) %s interrupted (%s), queued to resume at the next start", interrupted, self.engine.name
            )
        return len(interrupted)
