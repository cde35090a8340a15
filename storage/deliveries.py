"""Deliveries of outputs to destinations: what is due, each attempt, dead letters and their retry.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.events import record_event
from storage.files import FileLayout
from storage.schema import (
    Delivery,
    DeliveryState,
    Output,
    utcnow,
)
from storage.types import DeliveryStatus, DueDelivery


def due_deliveries(
    session: Session, layout: FileLayout, now: datetime, run_id: int | None = None, lease: timedelta | None = None
) -> dict[str, list[DueDelivery]]:
    """Deliveries due now, by destination. With `run_id`, they are leased to that node run for `lease` (the
    send's time-out and more): another node sharing the index skips them, so none is sent twice at once."""
    statement = (
        select(
            Delivery.id, Delivery.destination, Output.path, Output.sop_instance_uid, Delivery.attempts, Output.sha256
        )
        .join(Output, Output.id == Delivery.output_fk)
        .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.id)
    )
    if run_id is not None:
        free = Delivery.lease_until.is_(None) | (Delivery.lease_until < now) | (Delivery.claimed_by == run_id)
        statement = statement.where(free).with_for_update(of=Delivery, skip_locked=True)
    rows = session.execute(statement).all()
    if run_id is not None and rows:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_([row[0] for row in rows]))
            .values(claimed_by=run_id, lease_until=now + (lease or timedelta(minutes=5)))
        )
    batches: dict[str, list[DueDelivery]] = defaultdict(list)
    for delivery_id, destination, path, uid, attempts, digest in rows:
        batches[destination].append(DueDelivery(delivery_id, destination, layout.absolute(path), uid, attempts, digest))
    return dict(batches)


def record_delivery_attempt(
    session: Session, delivery_id: int, ok: bool, detail: str, max_attempts: int, next_attempt_at: datetime
) -> DeliveryState:
    delivery = session.get(Delivery, delivery_id)
    delivery.attempts += 1
    delivery.claimed_by, delivery.lease_until = None, None
    if ok:
        delivery.state = DeliveryState.SENT
        delivery.sent_at = utcnow()
        delivery.last_error = ""
    elif delivery.attempts >= max_attempts:
        delivery.state = DeliveryState.DEAD
        delivery.last_error = detail
        study_uid = delivery.output.job.study.study_instance_uid
        record_event(
            session,
            "ERROR",
            f"delivery {delivery_id} of {delivery.output.sop_instance_uid} to "
            f"{delivery.destination} dead after {delivery.attempts} attempts: {detail}",
            study_uid,
        )
    else:
        delivery.next_attempt_at = next_attempt_at
        delivery.last_error = detail
    return delivery.state


def requeue_dead_deliveries(session: Session, delivery_ids: list[int] | None) -> int:
    """`immunode retry`: dead (or, by id, any unsent) deliveries go back to the queue with fresh attempts."""
    statement = update(Delivery).values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=utcnow())
    if delivery_ids:
        statement = statement.where(Delivery.id.in_(delivery_ids), Delivery.state != DeliveryState.SENT)
    else:
        statement = statement.where(Delivery.state == DeliveryState.DEAD)
    return session.execute(statement).rowcount or 0


def delivery_counts(session: Session) -> dict[DeliveryState, int]:
    return {
        state: count
        for state, count in session.execute(select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state))
    }


def unsent_deliveries(session: Session) -> list[DeliveryStatus]:
    """Deliveries not sent yet (pending or dead), with their last error, for `immunode status`."""
    rows = session.execute(
        select(Delivery, Output)
        .join(Output, Output.id == Delivery.output_fk)
        .where(Delivery.state != DeliveryState.SENT)
        .order_by(Delivery.id)
    ).all()
    return [
        DeliveryStatus(
            d.id,
            o.kind,
            o.sop_instance_uid,
            d.destination,
            d.state.value,
            d.attempts,
            d.last_error or "",
            d.next_attempt_at if d.state is DeliveryState.PENDING else None,
        )
        for d, o in rows
    ]
