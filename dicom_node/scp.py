"""Storage SCP: C-ECHO and C-STORE of PET, CT and annotation objects from allowed peers.

Handlers only decode the header, write durably, index and answer: analysis runs elsewhere.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

from pydicom import uid as uids
from pydicom.pixels import get_decoder
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from dicom_node import status
from dicom_node.errors import ReceiveError
from dicom_node.ingest import parse_received
from immunode.config import NodeSettings, PeerSettings
from storage.errors import StorageError
from storage.store import InstanceStore, record_event

logger = logging.getLogger(__name__)

STORAGE_SOP_CLASSES = {
    "CT Image Storage": uids.CTImageStorage,
    "Enhanced CT Image Storage": uids.EnhancedCTImageStorage,
    "PET Image Storage": uids.PositronEmissionTomographyImageStorage,
    "Enhanced PET Image Storage": uids.EnhancedPETImageStorage,
    "Segmentation Storage": uids.SegmentationStorage,
    "RT Structure Set Storage": uids.RTStructureSetStorage,
    "Basic Text SR Storage": uids.BasicTextSRStorage,
    "Enhanced SR Storage": uids.EnhancedSRStorage,
    "Comprehensive SR Storage": uids.ComprehensiveSRStorage,
    "Comprehensive 3D SR Storage": uids.Comprehensive3DSRStorage,
    "Extensible SR Storage": uids.ExtensibleSRStorage,
}
UNCOMPRESSED_SYNTAXES = [
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
]
COMPRESSED_CANDIDATES = [
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.RLELossless,
]
# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised.
REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed and deflated syntaxes, plus the compressed ones whose decoders are installed."""
    compressed = []
    for syntax in COMPRESSED_CANDIDATES:
        try:
            if get_decoder(syntax).is_available:
                compressed.append(syntax)
        except NotImplementedError:
            continue
    return UNCOMPRESSED_SYNTAXES + compressed


class _NoDelayServer(ThreadedAssociationServer):
    """Disables Nagle's algorithm on accepted sockets: small C-STORE responses go out at once."""

    def get_request(self):  # noqa: ANN201 - socketserver signature
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


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


class StorageSCP:
    def __init__(
        self,
        node: NodeSettings,
        peers: PeerSettings,
        store: InstanceStore,
    ) -> None:
        self.node = node
        self.peers = peers
        self.store = store
        self._server: AssociationServer | None = None
        self.ae = AE(ae_title=node.ae_title)
        self.ae.maximum_associations = node.max_associations
        self.ae.network_timeout = node.network_timeout_s
        self.ae.acse_timeout = node.acse_timeout_s
        self.ae.dimse_timeout = node.dimse_timeout_s
        self.ae.maximum_pdu_size = node.max_pdu_bytes
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in STORAGE_SOP_CLASSES.values():
            self.ae.add_supported_context(sop_class, syntaxes)
        self.ae.add_supported_context(Verification)

    def start(self, port: int | None = None) -> int:
        """Start listening (non-blocking); returns the bound port (0 in settings or argument: a free one)."""
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        address = (self.node.host, self.node.port if port is None else port)
        # As AE.start_server(block=False) does, but with our server class (TCP_NODELAY on accepted sockets).
        self._server = self.ae.make_server(address, evt_handlers=handlers, server_class=_NoDelayServer)
        threading.Thread(target=self._server.serve_forever, name="immunode-scp", daemon=True).start()
        self.ae._servers.append(self._server)  # so that AE.shutdown() and server.shutdown() find it
        bound = self._server.server_address[1]
        logger.info("SCP %s listening on %s:%d", self.node.ae_title, self.node.host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event: Event) -> None:
        requestor = event.assoc.requestor
        # At EVT_REQUESTED the A-ASSOCIATE-RQ primitive is the only place the calling AE title is set yet.
        ae_title = str(requestor.primitive.calling_ae_title).strip()
        if peer_allowed(self.peers, ae_title, requestor.address):
            return
        logger.warning("association from unknown peer %r at %s rejected", ae_title[:16], requestor.address)
        self._record("WARNING", f"association from unknown peer {ae_title[:16]!r} at {requestor.address} rejected")
        event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNISED)
        # As pynetdicom's own negotiation does: let the DUL flush the A-ASSOCIATE-RJ before the socket closes.
        event.assoc.kill()

    def _on_echo(self, event: Event) -> int:
        return status.SUCCESS

    def _on_store(self, event: Event) -> int:
        started = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        affected = str(event.request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset(include_meta=True)
            header = parse_received(data, affected)
            stored = self.store.store(header, data, calling)
        except (ReceiveError, StorageError) as error:
            code = status.store_status_for(error)
            logger.warning("C-STORE from %s refused with 0x%04X: %s", calling, code, error)
            self._record_refusal(calling, affected, code, str(error), getattr(error, "study_instance_uid", ""))
            return code
        logger.debug(
            "stored %s (%s) in %.1f ms",
            stored.header.sop_instance_uid,
            stored.outcome.value,
            (time.perf_counter() - started) * 1000,
        )
        return status.SUCCESS

    def _record_refusal(self, calling: str, affected: str, code: int, reason: str, study_uid: str) -> None:
        affected_text = affected[:64] if len(affected) <= 64 else affected[:61] + "..."
        message = f"C-STORE of {affected_text!r} from {calling!r} refused with 0x{code:04X}: {reason}"
        self._record("ERROR", message, study_uid)

    def _record(self, level: str, message: str, study_uid: str = "") -> None:
        """Record a refusal in the index. If the index itself is down the refusal status still goes out and
        the log, already written by the caller, is the only record: the failure to record is logged too."""
        try:
            with self.store.database.session() as session:
                record_event(session, level, message, study_uid)
        except StorageError:
            logger.exception("could not record in the index: %s", message)
