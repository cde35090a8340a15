"""Events: what happened to a study (completion, jobs, pairing, deliveries, refusals), for `immunode status`."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from storage.schema import Event, utcnow
from storage.types import EventRecord


def record_event(executor: Session | Connection, level: str, message: str, study_instance_uid: str = "") -> None:
    """An event for `immunode status`; works inside an ORM session and on the ingest path's Core connection."""
    executor.execute(
        insert(Event).values(at=utcnow(), level=level, message=message, study_instance_uid=study_instance_uid[:64])
    )


def recent_events(session: Session, limit: int, levels: tuple[str, ...] = ("WARNING", "ERROR")) -> list[EventRecord]:
    rows = session.scalars(select(Event).where(Event.level.in_(levels)).order_by(Event.id.desc()).limit(limit)).all()
    return [EventRecord(e.at, e.level, e.study_instance_uid, e.message) for e in rows]


def study_events(session: Session, study_instance_uid: str) -> list[EventRecord]:
    rows = session.scalars(select(Event).where(Event.study_instance_uid == study_instance_uid).order_by(Event.id)).all()
    return [EventRecord(e.at, e.level, e.study_instance_uid, e.message) for e in rows]
