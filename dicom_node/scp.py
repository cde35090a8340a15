"""Storage SCP: C-ECHO and C-STORE from allowed peers, plain and/or over TLS, every connection audited.

Handlers only validate, write durably, index and answer: analysis runs elsewhere. The transport
(`dicom_node.transport`) keeps hostile connections from holding the node; association requests are checked
here (calling AE and address, called AE, the number of negotiated associations).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from pydicom import uid as uids
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification
from pynetdicom.transport import AssociationServer

from dicom_node import status
from dicom_node.errors import DatasetInvalid, ReceiveError
from dicom_node.fast_store import FastStoreSettings
from dicom_node.ingest import check_dataset, mapped_dataset
from dicom_node.receiving import ReceivingFile
from dicom_node.settings import NodeSettings, PeerSettings
from dicom_node.transport import Connection, TransportGuard, make_server_class
from dicom_node.types import StoreObservation, StoreRequest
from storage.audit import AuditEntry, AuditTrail
from storage.errors import OutOfResources, StorageError
from storage.schema import AuditDirection, AuditKind, AuditOutcome
from storage.store import InstanceStore

logger = logging.getLogger(__name__)

# Every storage SOP class is accepted (a PACS forwards whole studies: RT Plan, RT Dose, reports...); what no
# pipeline uses is stored and indexed all the same. `node.storage_sop_classes` may restrict the list.
STORAGE_SOP_CLASSES = {name: str(uid) for name, uid in _STORAGE_CLASSES.items()}
# Every transfer syntax a storage SCP can receive pixel data in: stored as received, decoded only when a
# pipeline reads it (the compressed ones through pylibjpeg). JPIP-referenced syntaxes carry no pixel data in
# the data set and the SMPTE ST 2110 ones are not for storage.
TRANSFER_SYNTAXES = [
    str(syntax)
    for syntax in uids.AllTransferSyntaxes
    if "JPIP" not in syntax.name and not str(syntax).startswith("1.2.840.10008.1.2.7.")
]
# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason.
REJECT_CALLING_AE = (0x01, 0x01, 0x03, "calling AE title not recognised")
REJECT_CALLED_AE = (0x01, 0x01, 0x07, "called AE title not recognised")
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02, "local limit exceeded (maximum associations)")


def storage_sop_classes(selection: list[str] | None) -> dict[str, str]:
    """Name -> UID of the storage classes offered: all, or those named (by keyword or UID) in the config."""
    if selection is None:
        return dict(STORAGE_SOP_CLASSES)
    by_uid = {uid: name for name, uid in STORAGE_SOP_CLASSES.items()}
    chosen = {}
    for item in selection:
        if item in STORAGE_SOP_CLASSES:
            chosen[item] = STORAGE_SOP_CLASSES[item]
        elif item in by_uid:
            chosen[by_uid[item]] = item
    return chosen


def peer_allowed(peers: PeerSettings, ae_title: str, host: str) -> bool:
    if peers.accept_any:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for peer in peers.allowed:
        if peer.ae_title != ae_title:
            continue
        if peer.host is None or address in ipaddress.ip_network(peer.host, strict=False):
            return True
    return False


@dataclass
class _Association:
    """What one association did, for its audit record."""

    calling: str = ""
    called: str = ""
    rejected: str = ""
    established: bool = False
    ended: AuditOutcome | None = None
    stored: int = 0
    refused: int = 0
    studies: list[str] = field(default_factory=list)


def _receive_to_disk(folder: Path, prefix: str) -> None:
    """Make pynetdicom write each C-STORE data set to a file in `folder` as its PDUs arrive, instead of
    assembling it in memory: memory stays bounded by the PDU size whatever the instance's size (whole-slide
    images are hundreds of MB). pynetdicom's switch and its temporary file are process-wide; the folder is the
    store's `incoming/` (same file system as objects/, so a stored instance is renamed, not copied), the names
    begin with the node run's `prefix`; a file the disk refuses is answered 0xA700 (`ReceivingFile`); the file of
    a data set its association did not wait for is removed when it ends, and a crashed run's at the next start
    (`FileLayout.remove_leftovers`)."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = partial(ReceivingFile, folder, prefix)


def _receive_error(request: object) -> str | None:
    """Why pynetdicom's file of this data set could not be written (the disk refused it), None when it was."""
    receiving = getattr(request, "_dataset_file", None)
    if isinstance(receiving, ReceivingFile) and receiving.error is not None:
        return receiving.refusal()
    return None


def _discard_unanswered(assoc: object) -> None:
    """Remove the files of data sets an ended association will not have answered: the one being received, and
    those received but not handled."""
    dimse = getattr(assoc, "dimse", None)
    if dimse is None:
        return
    files = [getattr(dimse.message, "_data_set_file", None)]
    files += [getattr(item[1], "_dataset_file", None) for item in list(dimse.msg_queue.queue)]
    for file in files:
        if isinstance(file, ReceivingFile):
            file.discard()


class StorageSCP:
    def __init__(
        self,
        node: NodeSettings,
        peers: PeerSettings,
        store: InstanceStore,
        trail: AuditTrail,
        tls_context: ssl.SSLContext | None = None,
        on_stored: Callable[[str], None] | None = None,
        observe: Callable[[StoreObservation], None] | None = None,
        on_sender_done: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.on_stored = on_stored  # called with the Study Instance UID after each instance stored
        self.on_sender_done = on_sender_done  # called when an association that stored instances has ended
        self.observe = observe  # called after each C-STORE answered (metrics)
        self.peers = peers
        self.store = store
        self.trail = trail
        self.tls_context = tls_context
        self._servers: list[AssociationServer] = []
        self._associations: dict[int, _Association] = {}
        self._lock = threading.Lock()
        self.guard = TransportGuard(
            max_pdu_bytes=node.max_pdu_bytes,
            pdu_timeout_s=node.network_timeout_s,
            handshake_timeout_s=node.acse_timeout_s,
            max_pending=node.max_pending_connections,
            on_closed=self._on_connection_closed,
        )
        self.ae = AE(ae_title=node.ae_title)
        # pynetdicom counts every connected thread (pending and dying ones too) against its limit; the SCP
        # applies its own limit to negotiated associations (`_on_requested`) and the transport bounds pending
        # connections, so pynetdicom's is only a far ceiling.
        self.ae.maximum_associations = 100 * (node.max_associations + node.max_pending_connections)
        self.ae.network_timeout = node.network_timeout_s
        self.ae.acse_timeout = node.acse_timeout_s
        self.ae.dimse_timeout = node.dimse_timeout_s
        self.ae.maximum_pdu_size = node.max_pdu_bytes
        for sop_class in storage_sop_classes(node.storage_sop_classes).values():
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._max_inflated = node.max_inflated_mb * 1024 * 1024

    def start(self, port: int | None = None, tls_port: int | None = None) -> tuple[int | None, int | None]:
        """Start listening (non-blocking); returns the bound (plain, TLS) ports, None where not listening.
        A port of 0 (in settings or argument) binds a free one."""
        prefix = f"{self.store.layout.in_flight_prefix}rx-"
        _receive_to_disk(self.store.layout.receiving, prefix)
        if self.node.fast_store:
            classes = frozenset(storage_sop_classes(self.node.storage_sop_classes).values())
            self.guard.fast_store = FastStoreSettings(self.handle_store, self.store.layout.receiving, prefix, classes)
        plain = self._serve(self.node.port if port is None else port, None) if self.node.plain else None
        secure = None
        if self.node.tls is not None and self.tls_context is not None:
            secure = self._serve(self.node.tls.port if tls_port is None else tls_port, self.tls_context)
        return plain, secure

    def _serve(self, port: int, tls_context: ssl.SSLContext | None) -> int:
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server_class = make_server_class(self.guard, tls_context)
        server = self.ae.make_server((self.node.host, port), evt_handlers=handlers, server_class=server_class)
        threading.Thread(target=server.serve_forever, name="immunode-scp", daemon=True).start()
        self.ae._servers.append(server)  # so that AE.shutdown() and server.shutdown() find it
        self._servers.append(server)
        bound = server.server_address[1]
        logger.info(
            "SCP %s listening on %s:%d (%s)",
            self.node.ae_title,
            self.node.host,
            bound,
            "TLS" if tls_context else "plain",
        )
        return bound

    def stop(self) -> None:
        """Stop listening and abort the associations still open (a sender retries what was not answered)."""
        for server in self._servers:
            server.shutdown()
        self._servers = []
        for assoc in self.ae.active_associations:
            if assoc.is_acceptor:
                assoc.abort()

    # --- association ---------------------------------------------------------------------------------------

    def _state(self, assoc: object) -> _Association:
        with self._lock:
            return self._associations.setdefault(id(assoc), _Association())

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        self.guard.negotiating(assoc)
        primitive = assoc.requestor.primitive
        # At EVT_REQUESTED the A-ASSOCIATE-RQ primitive is the only place the AE titles are set yet.
        state = self._state(assoc)
        state.calling = str(primitive.calling_ae_title).strip()
        state.called = str(primitive.called_ae_title).strip()
        reason = None
        if not peer_allowed(self.peers, state.calling, assoc.requestor.address):
            reason = REJECT_CALLING_AE
        elif not self.node.accept_any_called_ae and state.called != self.node.ae_title:
            reason = REJECT_CALLED_AE
        else:
            established = sum(1 for a in self.ae.active_associations if a.is_acceptor and a.is_established)
            if established >= self.node.max_associations:
                reason = REJECT_LOCAL_LIMIT
        if reason is None:
            return
        state.rejected = reason[3]
        logger.warning(
            "association %r -> %r from %s rejected: %s",
            state.calling[:16],
            state.called[:16],
            assoc.requestor.address,
            reason[3],
        )
        assoc.acse.send_reject(*reason[:3])
        # As pynetdicom's own negotiation does: let the DUL flush the A-ASSOCIATE-RJ before the socket closes.
        assoc.kill()

    def _on_established(self, event: Event) -> None:
        self._state(event.assoc).established = True

    def _on_ended(self, event: Event) -> None:
        state = self._state(event.assoc)
        state.ended = AuditOutcome.COMPLETED if event.event is evt.EVT_RELEASED else AuditOutcome.ABORTED
        if state.studies and self.on_sender_done is not None:
            self.on_sender_done()

    def sending_studies(self) -> frozenset[str]:
        """The study each open association stored its latest instance of: its sender is still sending it, so it is
        not complete whatever its quiet time (a sender that moved on to another study is done with the previous one;
        an association idle for `network_timeout_s` is closed)."""
        with self._lock:
            return frozenset(
                state.studies[-1] for state in self._associations.values() if state.studies and state.ended is None
            )

    def _on_connection_closed(self, connection: Connection, assoc: object | None) -> None:
        """The transport's report that a connection ended: its audit record."""
        with self._lock:
            state = self._associations.pop(id(assoc), None) if assoc is not None else None
        if state is not None and state.studies and self.on_sender_done is not None:
            self.on_sender_done()
        _discard_unanswered(assoc)
        if state is None and connection.bytes_received == 0:
            logger.debug("connection from %s:%d closed without data", connection.host, connection.port)
            return
        if state is None:
            kind, outcome = AuditKind.CONNECTION, AuditOutcome.CLOSED
            detail = connection.closed_reason or "closed before an association request"
        else:
            kind = AuditKind.ASSOCIATION
            if state.rejected:
                outcome, detail = AuditOutcome.REJECTED, state.rejected
            elif state.ended is not None:
                outcome, detail = state.ended, connection.closed_reason
            elif state.established:
                outcome, detail = AuditOutcome.ABORTED, connection.closed_reason or "connection dropped"
            else:
                outcome, detail = AuditOutcome.CLOSED, connection.closed_reason or "closed during negotiation"
            if state.refused:
                detail = f"{detail}; {state.refused} instance(s) refused".lstrip("; ")
        self.trail.audit(
            AuditEntry(
                direction=AuditDirection.INBOUND,
                kind=kind,
                outcome=outcome,
                calling_ae_title=state.calling if state else "",
                called_ae_title=state.called if state else "",
                peer_host=connection.host,
                peer_port=connection.port,
                tls=connection.tls,
                tls_peer_subject=connection.tls_subject,
                detail=detail,
                instances=state.stored if state else 0,
                study_uids=tuple(state.studies) if state else (),
                at=datetime.fromtimestamp(connection.opened_at, timezone.utc).replace(tzinfo=None),
            )
        )

    # --- DIMSE ---------------------------------------------------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        return status.SUCCESS

    def _on_store(self, event: Event) -> int:
        """pynetdicom's C-STORE event: what the fast path does not take (`node.fast_store` false)."""
        request = event.request
        return self.handle_store(
            StoreRequest(
                assoc=event.assoc,
                calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
                message_id=int(request.MessageID or 0),
                affected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
                affected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                abstract_syntax=str(event.context.abstract_syntax),
                transfer_syntax=str(event.context.transfer_syntax),
                dataset_path=Path(event.dataset_path),  # written to disk as it arrived (`_receive_to_disk`)
                receive_error=_receive_error(request),
            )
        )

    def handle_store(self, request: StoreRequest) -> int:
        """Validate, store durably, index; the status to answer (called on the association's thread)."""
        started = time.perf_counter()
        size = request.size
        if size is None:
            try:
                size = request.dataset_path.stat().st_size  # before the file is moved into the store
            except OSError:
                size = 0
        code = self._store(request)
        if self.observe is not None:
            self.observe(StoreObservation(request.calling_ae_title, code, size, time.perf_counter() - started))
        return code

    def _store(self, request: StoreRequest) -> int:
        started = time.perf_counter()
        state = self._state(request.assoc)
        calling = state.calling or request.calling_ae_title
        affected = request.affected_sop_instance_uid
        affected_class = request.affected_sop_class_uid
        try:
            if affected_class != request.abstract_syntax:
                raise DatasetInvalid("the request's Affected SOP Class differs from its presentation context's")
            if request.receive_error is not None:
                raise OutOfResources(request.receive_error)
            received = request.dataset_path
            held = request.dataset  # a small data set, kept in memory as it arrived; else its file, mapped
            with nullcontext(held) if held is not None else mapped_dataset(received, request.dataset_offset) as dataset:
                header = check_dataset(dataset, request.transfer_syntax, affected_class, affected, self._max_inflated)
            stored = self.store.store_received(header, received, calling, request.sha256, request.size)
        except (ReceiveError, StorageError) as error:
            code = status.store_status_for(error)
            logger.warning("C-STORE from %r refused with 0x%04X: %s", calling[:16], code, error)
            state.refused += 1
            self._record_refusal(calling, affected, code, str(error), getattr(error, "study_instance_uid", ""))
            return code
        state.stored += 1
        study = stored.header.study_instance_uid
        if study not in state.studies:
            state.studies.append(study)
        if self.on_stored is not None:
            self.on_stored(study)
        logger.debug(
            "stored %s (%s) in %.1f ms",
            stored.header.sop_instance_uid,
            stored.outcome.value,
            (time.perf_counter() - started) * 1000,
        )
        return status.SUCCESS

    def _record_refusal(self, calling: str, affected: str, code: int, reason: str, study_uid: str) -> None:
        """Every refusal is recorded in the index, or spooled while the index is unavailable."""
        self.trail.event(status.refusal_event("C-STORE", affected, calling, code, reason, study_uid))
