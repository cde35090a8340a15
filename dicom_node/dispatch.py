"""Dispatch stage: send queued result deliveries, one association (DIMSE) or one STOW-RS request (DICOMweb) per
destination and batch, with exponential back-off between attempts and a dead-letter state after the last one.
Every attempt is recorded in the index, so retry counts survive restarts; every association (or request) leaves
an audit record.

A delivery whose file cannot be read or sent fails on its own (attempt recorded, dead after the maximum,
shown by `immunode status`): the other deliveries to the same destination go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from dicom_node import dicomweb, scu
from dicom_node.scu import OutboundFile
from dicom_node.settings import Destination, DicomWebDestination, DispatchSettings
from dicom_node.types import SendResult
from storage.audit import AuditTrail
from storage.database import Database
from storage.deliveries import due_deliveries, record_delivery_attempt
from storage.files import FileLayout
from storage.schema import DeliveryState, utcnow
from storage.types import DueDelivery

logger = logging.getLogger(__name__)


def backoff_delay_s(attempts_made: int, initial_s: float, maximum_s: float) -> float:
    return min(initial_s * (2 ** max(attempts_made - 1, 0)), maximum_s)


def dispatch_due(
    ae_title: str,
    destinations: Sequence[Destination | DicomWebDestination],
    settings: DispatchSettings,
    database: Database,
    layout: FileLayout,
    now: datetime | None = None,
    trail: AuditTrail | None = None,
    run_id: int | None = None,
) -> int:
    """Send every delivery due now (as `ae_title`); returns how many were delivered. With `run_id` the
    deliveries are leased to this node run while they are sent (several nodes on one index)."""
    now = now or utcnow()
    lease = timedelta(seconds=4 * settings.timeout_s + 60)
    with database.session() as session:
        batches = due_deliveries(session, layout, now, run_id, lease)
    by_name = {d.name: d for d in destinations}
    delivered = 0
    for name, batch in batches.items():
        destination = by_name.get(name)
        if destination is None:
            results = [
                SendResult(d.sop_instance_uid, False, f"destination {name!r} is no longer configured") for d in batch
            ]
        else:
            try:
                send = dicomweb.send_batch if isinstance(destination, DicomWebDestination) else scu.send_batch
                sent = send(
                    destination,  # type: ignore[arg-type]
                    ae_title,
                    [OutboundFile(d.path, d.sha256) for d in batch],
                    settings.timeout_s,
                )
            except Exception as error:  # anything unforeseen fails this batch's attempt, recorded below
                logger.exception("sending to %s failed", name)
                results = [SendResult(d.sop_instance_uid, False, f"{error.__class__.__name__}: {error}") for d in batch]
            else:
                results = list(sent.results)
                if sent.audit is not None and trail is not None:
                    trail.audit(sent.audit)
        delivered += _record(settings, database, name, batch, results, now)
    return delivered


def _record(
    settings: DispatchSettings,
    database: Database,
    name: str,
    batch: Sequence[DueDelivery],
    results: Sequence[SendResult],
    now: datetime,
) -> int:
    delivered = 0
    with database.session() as session:
        for d, result in zip(batch, results, strict=True):
            delay = backoff_delay_s(d.attempts + 1, settings.backoff_initial_s, settings.backoff_max_s)
            state = record_delivery_attempt(
                session,
                d.delivery_id,
                result.ok,
                result.detail,
                settings.max_attempts,
                now + timedelta(seconds=delay),
            )
            if state is DeliveryState.SENT:
                delivered += 1
                logger.info("delivered %s to %s (%s)", d.sop_instance_uid, name, result.detail)
            else:
                logger.warning(
                    "delivery %d of %s to %s failed (attempt %d): %s; now %s",
                    d.delivery_id,
                    d.sop_instance_uid,
                    name,
                    d.attempts + 1,
                    result.detail,
                    state.value,
                )
    return delivered
