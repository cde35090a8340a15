"""The SCP's transport: accepted connections that no peer can use to lock the node out, and TLS.

pynetdicom reads a PDU by blocking until all of its declared length has arrived, and counts every connected
thread against the association limit. Left at that, ten connections that send six bytes of a PDU header
hold every slot for as long as the peer likes, and a declared length of 0xFFFFFFFF is buffered without end.
Here, per accepted connection:

- **read deadline**: a PDU must arrive whole within `network_timeout_s` of its first byte (a partial PDU
  times out like an idle association); the peer is disconnected otherwise;
- **length bound**: a P-DATA-TF PDU may not declare more than the maximum PDU length this node announced
  (`node.max_pdu_bytes`) and any other PDU more than `MAX_CONTROL_PDU_BYTES`; larger declarations end the
  connection before anything is buffered;
- **pending connections** (connected, association request not yet received) are kept apart from the
  association slots: at most `node.max_pending_connections` of them, and a new connection beyond that
  evicts the oldest pending one, so stalled connections cannot starve a scanner that negotiates at once;
- **TLS**: the handshake runs in the connection's own thread under the ACSE timeout (pynetdicom's server
  would run it in the accepting thread, where one silent client blocks every other).

The association limit itself (`node.max_associations`) counts negotiated associations only; it is applied
by the SCP when an association request arrives.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.fast_store import FastStoreSettings
from dicom_node.reactor import EventDrivenAssociation

logger = logging.getLogger(__name__)

MAX_CONTROL_PDU_BYTES = 1024 * 1024  # A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT: far smaller in practice
P_DATA_TF = 0x04
PDV_SLACK_BYTES = 16  # the PDU's own length field covers PDV item headers beyond the announced maximum


@dataclass
class Connection:
    """What the transport knows of one accepted connection (read by the SCP's audit)."""

    host: str
    port: int
    opened_at: float = field(default_factory=time.time)
    tls: bool = False
    tls_subject: str = ""
    bytes_received: int = 0
    closed_reason: str = ""  # why the transport ended it, if it did
    negotiating: bool = False  # an A-ASSOCIATE-RQ arrived: no longer a pending connection


class PendingConnections:
    """Connections that have not yet sent an association request, oldest first, with eviction."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, tuple[Connection, socket.socket]] = OrderedDict()

    def add(self, key: int, connection: Connection, sock: socket.socket) -> None:
        evicted = []
        with self._lock:
            while len(self._pending) >= self.maximum:
                evicted.append(self._pending.popitem(last=False)[1])
            self._pending[key] = (connection, sock)
        for old, old_socket in evicted:
            old.closed_reason = "evicted: pending connections full and this one was the oldest"
            logger.warning("connection from %s:%d evicted (no association request yet)", old.host, old.port)
            _shutdown(old_socket)

    def discard(self, key: int) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def describe_subject(certificate: dict | None) -> str:
    """RFC 4514-like text of a peer certificate's subject, e.g. `CN=scanner,O=Hospital`."""
    if not certificate:
        return ""
    parts = []
    for rdn in certificate.get("subject", ()):
        for name, value in rdn:
            short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}.get(name, name)
            parts.append(f"{short}={value}")
    return ",".join(parts)[:255]


class GuardedSocket(AssociationSocket):
    """An accepted connection's socket with a whole-PDU read deadline and a PDU length bound."""

    def __init__(
        self, assoc: Association, client_socket: socket.socket, connection: Connection, guard: TransportGuard
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.connection = connection
        self.guard = guard
        self._deadline: float | None = None
        self._woken = False

    def recv(self, nr_bytes: int) -> bytearray:
        """pynetdicom reads a PDU as recv(6) for the header, then recv(length) for the rest."""
        sock = self.socket
        if sock is None:
            return bytearray()
        if self._deadline is None:
            self._deadline = time.monotonic() + self.guard.pdu_timeout_s
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._end("a PDU did not arrive whole within the network timeout")
                    return data
                sock.settimeout(remaining)
                chunk = sock.recv(min(nr_bytes - len(data), 65536))
                if not chunk:
                    self._wake()
                    break
                data.extend(chunk)
                self.connection.bytes_received += len(chunk)
        except (TimeoutError, socket.timeout):
            self._end("a PDU did not arrive whole within the network timeout")
            return data
        except OSError:
            self._wake()
            return data
        if nr_bytes == 6 and len(data) == 6:
            pdu_type, _, length = struct.unpack(">BBL", data)
            limit = self.guard.max_pdu_bytes + PDV_SLACK_BYTES if pdu_type == P_DATA_TF else MAX_CONTROL_PDU_BYTES
            if length > limit:
                self._end(f"PDU type 0x{pdu_type:02X} declares {length} bytes, more than the {limit} accepted")
                return data[:5]  # pynetdicom treats a short header as a closed connection
            if length == 0:
                self._deadline = None
        else:
            self._deadline = None  # the body of the PDU (or a short read that ends the connection)
        return data

    def _end(self, reason: str) -> None:
        self.connection.closed_reason = reason
        logger.warning("connection from %s:%d ended: %s", self.connection.host, self.connection.port, reason)
        _shutdown(self.socket)
        self._wake()

    def _wake(self) -> None:
        """The connection is gone. Before an association request, pynetdicom's acceptor would go on waiting
        for one for the whole ACSE timeout: an empty primitive ends that wait at once."""
        if not self.connection.negotiating and not self._woken:
            self._woken = True
            self.assoc.dul.to_user_queue.put(None)


class TransportGuard:
    """Settings and state shared by the connections of one SCP."""

    def __init__(
        self,
        max_pdu_bytes: int,
        pdu_timeout_s: float,
        handshake_timeout_s: float,
        max_pending: int,
        on_closed: Callable[[Connection, object | None], None],
    ) -> None:
        self.max_pdu_bytes = max_pdu_bytes
        self.pdu_timeout_s = pdu_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.pending = PendingConnections(max_pending)
        # The C-STORE fast path (`dicom_node.fast_store`), when the SCP uses it.
        self.fast_store: FastStoreSettings | None = None
        # Called once per connection after it ended, with the association (None if TLS failed first).
        self.on_closed = on_closed
        self._connections: dict[int, Connection] = {}
        self._lock = threading.Lock()

    def connection_of(self, assoc: object) -> Connection | None:
        with self._lock:
            return self._connections.get(id(assoc))

    def negotiating(self, assoc: object) -> None:
        """The association request arrived: the connection is no longer pending."""
        connection = self.connection_of(assoc)
        if connection is not None:
            connection.negotiating = True
        self.pending.discard(id(assoc))


class GuardedRequestHandler(RequestHandler):
    """One accepted connection: TLS handshake, then the association, then the close report (`on_closed`)."""

    server: GuardedServer

    def handle(self) -> None:
        guard = self.server.guard
        host, port = str(self.client_address[0]), int(self.client_address[1])
        self.connection = Connection(host, port)
        if self.server.tls_context is not None and not self._handshake():
            guard.on_closed(self.connection, None)
            return
        assoc = self._create_association()
        key = id(assoc)
        with guard._lock:
            guard._connections[key] = self.connection
        guard.pending.add(key, self.connection, self.request)
        try:
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            guard.pending.discard(key)
            with guard._lock:
                guard._connections.pop(key, None)
            _shutdown(self.request)
            self.request.close()
            guard.on_closed(self.connection, assoc)

    def _handshake(self) -> bool:
        raw: socket.socket = self.request
        self.connection.tls = True
        try:
            raw.settimeout(self.server.guard.handshake_timeout_s)
            wrapped = self.server.tls_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            wrapped.do_handshake()
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            self.connection.closed_reason = f"TLS handshake failed: {error.__class__.__name__}: {error}"[:500]
            self.connection.bytes_received = max(self.connection.bytes_received, 1)
            logger.warning(
                "connection from %s:%d refused: %s",
                self.connection.host,
                self.connection.port,
                self.connection.closed_reason,
            )
            _shutdown(raw)
            raw.close()
            return False
        self.connection.tls_subject = describe_subject(wrapped.getpeercert())
        wrapped.settimeout(None)
        self.request = wrapped
        return True

    def _create_association(self) -> Association:
        """As pynetdicom's RequestHandler does, with the guarded socket and the event-driven reactors."""
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{self.connection.host}:{self.connection.port}"
        assoc.set_socket(GuardedSocket(assoc, self.request, self.connection, self.server.guard))
        if self.server.guard.fast_store is not None:
            assoc.receive_stores(self.server.guard.fast_store)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # pynetdicom deep-copies the ~170 supported contexts of ~35 transfer syntaxes each for every association
        # (0.1-0.4 s of validated UID copies per association, profiled); negotiation only reads them and makes
        # new contexts for its results, and the SCP's handlers never change them: shared, not copied.
        assoc.acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in handlers:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY, the transport guard and TLS in the connection thread."""

    guard: TransportGuard
    tls_context: ssl.SSLContext | None = None
    # Stopping the server does not wait for connection threads: the SCP aborts its associations itself.
    daemon_threads = True
    block_on_close = False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, address = self.socket.accept()  # no TLS here: the handshake runs in the handler thread
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


def make_server_class(guard: TransportGuard, tls_context: ssl.SSLContext | None) -> type[GuardedServer]:
    """A server class bound to this SCP's guard and TLS context (pynetdicom instantiates it)."""

    class BoundServer(GuardedServer):
        def __init__(self, *args: object, **kwargs: object) -> None:  # pynetdicom's constructor
            kwargs["request_handler"] = GuardedRequestHandler
            kwargs.pop("ssl_context", None)
            super().__init__(*args, **kwargs)
            self.guard = guard
            self.tls_context = tls_context

    return BoundServer
