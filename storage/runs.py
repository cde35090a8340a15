"""Node runs: each `immunode serve` leaves a row; one without a clean stop tells the next start which days of
the object store to reconcile with the index (files written but never indexed by a crash)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.schema import NodeRun, utcnow


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


def begin_run(session: Session, host: str, pid: int) -> RunStart:
    earlier = session.execute(select(NodeRun.id, NodeRun.started_at, NodeRun.stopped_at)).all()
    unclean = [(run_id, started) for run_id, started, stopped in earlier if stopped is None]
    run = NodeRun(started_at=utcnow(), host=host[:255], pid=pid)
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
    session.execute(update(NodeRun).where(NodeRun.id == run_id).values(stopped_at=utcnow(), clean_stop=True))


def latest_run(session: Session) -> RunSummary | None:
    run = session.scalar(select(NodeRun).order_by(NodeRun.id.desc()).limit(1))
    if run is None:
        return None
    unclean = session.scalar(
        select(func.count(NodeRun.id)).where(NodeRun.clean_stop.is_(False), NodeRun.stopped_at.is_not(None))
    )
    return RunSummary(run.started_at, run.host, run.orphans_indexed, run.orphans_quarantined, int(unclean or 0))
