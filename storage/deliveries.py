"""Deliveries of outputs to destinations: what is due, each attempt, dead letters and their retry.

Every function takes an open session; the caller owns the transaction (`Database.session()`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

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


def due_deliveries(session: Session, layout: FileLayout, now: datetime) -> dict[str, list[DueDelivery]]:
    rows = session.execute(
        select(
            Delivery.id, Delivery.destination, Output.path, Output.sop_instance_uid, Delivery.attempts, Output.sha256
        )
        .join(Output, Output.id == Delivery.output_fk)
        .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.id)
    ).all()
    batches: dict[str, list[DueDelivery]] = defaultdict(list)
    for delivery_id, destination, path, uid, attempts, digest in rows:
        batches[destination].append(DueDelivery(delivery_id, destination, layout.absolute(path), uid, attempts, digest))
    return dict(batches)


def record_delivery_attempt(
    session: Session, delivery_id: int, ok: bool, detail: str, max_attempts: int, next_attempt_at: datetime
) -> DeliveryState:
    delivery = session.get(Delivery, delivery_id)
    delivery.attempts += 1
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
        DeliveryStatus(d.id, o.kind, o.sop_instance_uid, d.destination, d.state.value, d.attempts, d.last_error or "")
        for d, o in rows
    ]
