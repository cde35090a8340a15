"""Dispatch stage: send queued result deliveries, one association per destination and batch, with
exponential back-off between attempts and a dead-letter state after the last one. Every attempt is
recorded in the index, so retry counts survive restarts."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from dicom_node.scu import send_batch
from immunode.config import Settings
from storage import index
from storage.database import Database
from storage.files import FileLayout
from storage.schema import DeliveryState, utcnow

logger = logging.getLogger(__name__)


def backoff_delay_s(attempts_made: int, initial_s: float, maximum_s: float) -> float:
    return min(initial_s * (2 ** max(attempts_made - 1, 0)), maximum_s)


def dispatch_due(settings: Settings, database: Database, layout: FileLayout, now: datetime | None = None) -> int:
    """Send every delivery due now; returns how many were delivered."""
    now = now or utcnow()
    with database.session() as session:
        batches = index.due_deliveries(session, layout, now)
    destinations = {d.name: d for d in settings.destinations}
    delivered = 0
    for name, batch in batches.items():
        destination = destinations.get(name)
        if destination is None:
            results = {d.delivery_id: (False, f"destination {name!r} is no longer configured") for d in batch}
        else:
            sent = send_batch(destination, settings.node.ae_title, [d.path for d in batch], settings.dispatch.timeout_s)
            by_uid = {r.sop_instance_uid: r for r in sent}
            results = {}
            for d in batch:
                outcome = by_uid.get(d.sop_instance_uid)
                results[d.delivery_id] = (outcome.ok, outcome.detail) if outcome else (False, "not sent")
        with database.session() as session:
            for d in batch:
                ok, detail = results[d.delivery_id]
                delay = backoff_delay_s(
                    d.attempts + 1, settings.dispatch.backoff_initial_s, settings.dispatch.backoff_max_s
                )
                state = index.record_delivery_attempt(
                    session, d.delivery_id, ok, detail, settings.dispatch.max_attempts, now + timedelta(seconds=delay)
                )
                if state is DeliveryState.SENT:
                    delivered += 1
                    logger.info("delivered %s to %s (%s)", d.sop_instance_uid, name, detail)
                else:
                    logger.warning(
                        "delivery %d of %s to %s failed (attempt %d): %s; now %s",
                        d.delivery_id,
                        d.sop_instance_uid,
                        name,
                        d.attempts + 1,
                        detail,
                        state.value,
                    )
    return delivered
