"""Node runs: each `immunode serve` leaves a row; one without a clean stop tells the next start which days of
the object store to reconcile with the index (files written but never indexed by a crash).

Several nodes may share one index (PostgreSQL) and storage root: a run writes a heartbeat every few seconds,
and a run without a stop is dead only when its heartbeat is older than `STALE_AFTER` (a live sibling's run is
neither reconciled nor robbed of its jobs)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from storage.jobs import requeue_or_fail
from storage.schema import Delivery, Job, JobState, NodeRun, utcnow

HEARTBEAT_EVERY = timedelta(seconds=5)
STALE_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class RunStart:
    """A run of the node just recorded, and whether (from when) files must be reconciled."""

    run_id: int
    reconcile: bool  # an earlier run ended without a clean stop, or none is recorded
    since: date | None  # reconcile day folders from this day on; None: the whole object store
    unclean_runs: tuple[int, ...]


@dataclass(frozen=True)
class RunSummary:
    """The latest run of the node and what its start-up reconciliation did, for `immunode status`."""

    started_at: datetime
    host: str
    orphans_indexed: int
    orphans_quarantined: int
    unclean_runs: int  # earlier runs that ended without a clean stop (crash, kill -9, power cut)


def _alive(run: Row, now: datetime) -> bool:
    """A run is alive while it has not stopped and its heartbeat is fresh; a run of this machine whose process is
    gone is dead at once (a node restarted right after a crash reconciles at its start)."""
    if run.stopped_at is not None or run.heartbeat_at is None or now - run.heartbeat_at >= STALE_AFTER:
        return False
    if run.host == socket.gethostname()[:255] and run.pid:
        try:
            os.kill(run.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # a process of another user has that pid
    return True


def _runs(session: Session, unstopped: bool = False) -> list[Row]:
    """Recorded runs; `unstopped`: only those without a stop (live ones, or dead ones nobody reconciled yet)."""
    statement = select(
        NodeRun.id, NodeRun.started_at, NodeRun.stopped_at, NodeRun.heartbeat_at, NodeRun.host, NodeRun.pid
    )
    if unstopped:
        statement = statement.where(NodeRun.stopped_at.is_(None))
    return list(session.execute(statement).all())


def begin_run(session: Session, host: str, pid: int) -> RunStart:
    now = utcnow()
    earlier = _runs(session)
    unclean = [(run.id, run.started_at) for run in earlier if run.stopped_at is None and not _alive(run, now)]
    run = NodeRun(started_at=now, host=host[:255], pid=pid, heartbeat_at=now)
    session.add(run)
    session.flush()
    if not earlier:
        return RunStart(run.id, True, None, ())
    if not unclean:
        return RunStart(run.id, False, None, ())
    # A day early: the day folders are UTC days of receipt, and a run may have started just after midnight.
    since = min(started for _, started in unclean).date() - timedelta(days=1)
    return RunStart(run.id, True, since, tuple(run_id for run_id, _ in unclean))


def record_reconciliation(session: Session, start: RunStart, indexed: int, quarantined: int) -> None:
    session.execute(
        update(NodeRun)
        .where(NodeRun.id == start.run_id)
        .values(orphans_indexed=indexed, orphans_quarantined=quarantined)
    )
    if start.unclean_runs:
        session.execute(
            update(NodeRun).where(NodeRun.id.in_(start.unclean_runs)).values(stopped_at=utcnow(), clean_stop=False)
        )


def end_run(session: Session, run_id: int) -> None:
    """A clean stop: the run's delivery leases are handed back (its running jobs were, by the runner)."""
    session.execute(update(NodeRun).where(NodeRun.id == run_id).values(stopped_at=utcnow(), clean_stop=True))
    session.execute(update(Delivery).where(Delivery.claimed_by == run_id).values(claimed_by=None, lease_until=None))


def latest_run(session: Session) -> RunSummary | None:
    run = session.scalar(select(NodeRun).order_by(NodeRun.id.desc()).limit(1))
    if run is None:
        return None
    unclean = session.scalar(
        select(func.count(NodeRun.id)).where(NodeRun.clean_stop.is_(False), NodeRun.stopped_at.is_not(None))
    )
    return RunSummary(run.started_at, run.host, run.orphans_indexed, run.orphans_quarantined, int(unclean or 0))


def heartbeat(session: Session, run_id: int) -> None:
    session.execute(update(NodeRun).where(NodeRun.id == run_id).values(heartbeat_at=utcnow()))


def live_runs(session: Session) -> frozenset[int]:
    now = utcnow()
    return frozenset(run.id for run in _runs(session, unstopped=True) if _alive(run, now))


def dead_runs(session: Session) -> set[int]:
    """Runs without a stop whose heartbeat went stale (or whose process on this machine is gone): their claims
    may be taken back. A cleanly stopped run handed its claims back itself, so stopped runs are not read (this
    runs with every heartbeat, and the table keeps every run ever)."""
    now = utcnow()
    return {run.id for run in _runs(session, unstopped=True) if not _alive(run, now)}


def release_claims_of_dead_runs(session: Session, max_attempts: int) -> tuple[int, int]:
    """Jobs running (or being paired) for a dead run go back to the queue (or fail when their attempts are
    used up); its delivery leases are dropped. Returns (jobs, deliveries)."""
    dead = dead_runs(session)
    if not dead:
        return 0, 0
    jobs = session.scalars(
        select(Job).where(Job.claimed_by.in_(dead), Job.state == JobState.RUNNING).with_for_update(skip_locked=True)
    ).all()
    requeue_or_fail(jobs, max_attempts, "its node died")
    session.execute(
        update(Job)
        .where(Job.claimed_by.in_(dead), Job.state != JobState.RUNNING)
        .values(claimed_by=None, lease_until=None)
    )
    released = session.execute(
        update(Delivery).where(Delivery.claimed_by.in_(dead)).values(claimed_by=None, lease_until=None)
    ).rowcount
    return len(jobs), int(released or 0)
