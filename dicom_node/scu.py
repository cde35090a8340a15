"""Storage SCU: send result files to a destination, one association per batch, plain or over TLS.

Only a success status (0x0000) or a warning (0xB000, 0xB006, 0xB007) counts as delivered; a failure
status, a timeout, an aborted association or an empty response is not. A file that is missing, whose bytes
changed since it was written and validated (sha256), or that does not read as DICOM fails on its own and is
not sent; the others still go. Retries and back-off are the dispatch stage's business
(`dicom_node.dispatch`), which records every attempt in the index. Every association attempt yields one
audit record.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pynetdicom import AE, build_context
from pynetdicom.association import Association

from dicom_node.errors import ReceiveError
from dicom_node.ingest import parse_received
from dicom_node.settings import Destination
from dicom_node.tls import tls_arguments
from dicom_node.transport import describe_subject
from dicom_node.types import SendResult
from storage.audit import AuditEntry
from storage.schema import AuditDirection, AuditKind, AuditOutcome, utcnow

logger = logging.getLogger(__name__)

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class OutboundFile:
    path: Path
    sha256: str = ""  # of the file as written and validated; "" (objects indexed before it was kept): not checked


@dataclass(frozen=True)
class SentBatch:
    results: tuple[SendResult, ...]  # one per file, in order
    audit: AuditEntry | None  # None when no file was readable (no association attempted)


def read_outbound(item: OutboundFile) -> pydicom.Dataset | str:
    """The data set, or why it cannot be sent."""
    try:
        data = item.path.read_bytes()
    except FileNotFoundError:
        return f"result file missing: {item.path.name}"
    except OSError as error:
        return f"result file unreadable: {error.strerror}"
    if item.sha256 and hashlib.sha256(data).hexdigest() != item.sha256:
        return f"result file {item.path.name} changed since it was written and validated (sha256 differs)"
    try:
        parse_received(data)  # the whole file parses, as anything the node receives must
        return pydicom.dcmread(BytesIO(data))
    except ReceiveError as error:
        return f"result file {item.path.name} does not read as DICOM: {error}"
    except Exception as error:  # pydicom raises many types on bad input; all mean "not sendable"
        return f"result file {item.path.name} does not read as DICOM: {error.__class__.__name__}: {error}"


def sendable(items: Sequence[OutboundFile]) -> tuple[list[SendResult | None], list[tuple[int, pydicom.Dataset]]]:
    """The files' results so far (a failure for each file that cannot be sent, None for the others) and the data
    sets to send, with their index."""
    read = [read_outbound(item) for item in items]
    results: list[SendResult | None] = [
        SendResult("", False, value) if isinstance(value, str) else None for value in read
    ]
    datasets = [(i, ds) for i, ds in enumerate(read) if not isinstance(ds, str)]
    for i, ds in datasets:
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            results[i] = SendResult("", False, f"result file {items[i].path.name} lacks its SOP Class/Instance UID")
    return results, [(i, ds) for i, ds in datasets if results[i] is None]  # type: ignore[misc]


def send_batch(
    destination: Destination, calling_ae_title: str, files: Sequence[OutboundFile | Path], timeout_s: float
) -> SentBatch:
    items = [f if isinstance(f, OutboundFile) else OutboundFile(Path(f)) for f in files]
    results, datasets = sendable(items)
    if not datasets:
        return SentBatch(tuple(results), None)
    started = utcnow()
    tls = tls_arguments(destination.tls, destination.host)
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}
    ae.requested_contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in sorted(contexts)]
    subject = ""
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls)
    except OSError as error:
        reason = f"cannot connect: {error}"
        assoc = None
    else:
        reason = ""
        if not assoc.is_established:
            reason = (
                "association rejected" if assoc.is_rejected else "association not established (peer down or aborted)"
            )
        elif tls is not None:
            subject = _peer_subject(assoc)
    if reason:
        for i, ds in datasets:
            results[i] = SendResult(str(ds.SOPInstanceUID), False, reason)
    else:
        try:
            for i, ds in datasets:
                results[i] = _send_one(assoc, ds)
        finally:
            if assoc.is_established:
                assoc.release()
    sent = [r for r in results if r is not None and r.ok]
    attempted = [results[i] for i, _ in datasets]
    outcome = (
        AuditOutcome.COMPLETED
        if len(sent) == len(attempted)
        else AuditOutcome.FAILED
        if not sent
        else AuditOutcome.PARTIAL
    )
    if reason.startswith("association rejected"):
        outcome = AuditOutcome.REJECTED
    studies = tuple(dict.fromkeys(str(ds.get("StudyInstanceUID", "")) for i, ds in datasets if results[i].ok))
    audit = AuditEntry(
        direction=AuditDirection.OUTBOUND,
        kind=AuditKind.SEND,
        outcome=outcome,
        calling_ae_title=calling_ae_title,
        called_ae_title=destination.ae_title,
        peer_host=destination.host,
        peer_port=destination.port,
        tls=tls is not None,
        tls_peer_subject=subject,
        detail=reason or "; ".join(sorted({r.detail for r in attempted if not r.ok}))[:500],
        instances=len(sent),
        study_uids=studies,
        at=started,
    )
    return SentBatch(tuple(results), audit)


def _send_one(assoc: Association, ds: pydicom.Dataset) -> SendResult:
    uid = str(ds.SOPInstanceUID)
    if not assoc.is_established:
        return SendResult(uid, False, "association ended before this instance was sent")
    try:
        response = assoc.send_c_store(ds)
    except (RuntimeError, ValueError, OSError) as error:
        return SendResult(uid, False, f"send failed: {error}")
    code = getattr(response, "Status", None)
    if code is None:
        return SendResult(uid, False, "no response (timeout, abort or invalid response)")
    if code == 0x0000 or code in WARNING_STATUSES:
        return SendResult(uid, True, f"0x{code:04X}")
    return SendResult(uid, False, f"failure status 0x{code:04X}")


def _peer_subject(assoc: Association) -> str:
    sock = getattr(assoc.dul.socket, "socket", None)
    try:
        return describe_subject(sock.getpeercert()) if sock is not None else ""
    except (AttributeError, ValueError):
        return ""
