"""Sending results: one destination's batch in one association (DIMSE C-STORE) or one STOW-RS request (DICOMweb),
one result per file. Which deliveries are due, the back-off between attempts and the dead letters are the
dispatch stage's (`immunode.flow.dispatch_due`, run by the stage table `immunode.stages`).

A delivery whose file cannot be read or sent fails on its own: the other files of the batch go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dicom_node import dicomweb, scu
from dicom_node.scu import OutboundFile, SentBatch
from dicom_node.settings import Destination, DicomWebDestination
from dicom_node.types import SendResult
from storage.types import DueDelivery

logger = logging.getLogger(__name__)


def send_batch(
    destination: Destination | DicomWebDestination, ae_title: str, batch: Sequence[DueDelivery], timeout_s: float
) -> SentBatch:
    """Send the batch's files to `destination` as `ae_title`: one result per delivery, in order, and the
    association's (or request's) audit entry. Anything unforeseen fails the whole batch, the error in each result."""
    files = [OutboundFile(d.path, d.sha256) for d in batch]
    try:
        if isinstance(destination, DicomWebDestination):
            return dicomweb.send_batch(destination, ae_title, files, timeout_s)
        return scu.send_batch(destination, ae_title, files, timeout_s)
    except Exception as error:  # recorded as this batch's failed attempt by the stage
        logger.exception("sending to %s failed", destination.name)
        detail = f"{error.__class__.__name__}: {error}"
        return SentBatch(tuple(SendResult(d.sop_instance_uid, False, detail) for d in batch), None)
