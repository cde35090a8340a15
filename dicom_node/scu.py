"""Storage SCU: send result files to a destination, one association per batch.

Only a success status (0x0000) or a warning (0xB000, 0xB006, 0xB007) counts as delivered; a failure
status, a timeout, an aborted association or an empty response is not. Retries and back-off are the
dispatch stage's business (`pipelines.dispatch`), which records every attempt in the index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, build_context

from immunode.config import Destination
from pipelines.types import SendResult

logger = logging.getLogger(__name__)

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


def send_batch(
    destination: Destination, calling_ae_title: str, files: Sequence[Path], timeout_s: float
) -> list[SendResult]:
    datasets = []
    for path in files:
        ds = pydicom.dcmread(path)
        datasets.append(ds)
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.requested_contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in sorted(contexts)]
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as error:
        return [SendResult(str(ds.SOPInstanceUID), False, f"cannot connect: {error}") for ds in datasets]
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association not established (peer down or aborted)"
        return [SendResult(str(ds.SOPInstanceUID), False, reason) for ds in datasets]
    results = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if not assoc.is_established:
                results.append(SendResult(uid, False, "association ended before this instance was sent"))
                continue
            try:
                response = assoc.send_c_store(ds)
            except (RuntimeError, ValueError, OSError) as error:
                results.append(SendResult(uid, False, f"send failed: {error}"))
                continue
            code = getattr(response, "Status", None)
            if code is None:
                results.append(SendResult(uid, False, "no response (timeout, abort or invalid response)"))
            elif code == 0x0000 or code in WARNING_STATUSES:
                results.append(SendResult(uid, True, f"0x{code:04X}"))
            else:
                results.append(SendResult(uid, False, f"failure status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
