"""The DICOMweb STOW-RS endpoint (PS3.18 10.5): POST /studies and POST /studies/{StudyInstanceUID} with a
multipart/related; type="application/dicom" body, on its own HTTP(S) listener (`node.dicomweb`, off by default).

What a C-STORE gets, a STOW-RS request gets: the client is authenticated (HTTP Basic or a bearer token of a
configured client, optionally from its network only; `accept_any` for a closed lab network), every part is checked
as a C-STORE data set (`dicom_node.ingest.check_file`) and stored durably and indexed before the response counts it
as stored; failures carry the status of the one table (`dicom_node.status`) as Failure Reason; each refused
instance leaves an event and each request one audit record. The body is streamed to files (`dicom_node.multipart`),
never held in memory; a body cut short stores nothing (400).

Responses: 200 every instance stored; 202 some stored, others failed; 409 none stored; 503 none stored for want of
resources (Retry-After); 400 a malformed body; 401 no valid credentials; 411/413/415 no length, too large, not
application/dicom. The Store Instances Response Module is JSON (application/dicom+json), or XML (PS3.19 Native DICOM
Model) when the Accept header asks for application/dicom+xml only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from xml.etree import ElementTree

from pydicom.dataset import Dataset

from common.passwords import check_password
from dicom_node import status
from dicom_node.errors import BadMultipart
from dicom_node.ingest import UID_PATTERN
from dicom_node.multipart import DICOM, PartFiles, PartOutcome, media_type, store_part
from dicom_node.settings import DicomWebClient, DicomWebServerSettings
from dicom_node.transport import describe_subject
from dicom_node.types import StoreObservation
from storage.audit import AuditEntry, AuditTrail
from storage.errors import OutOfResources
from storage.schema import AuditDirection, AuditKind, AuditOutcome, utcnow
from storage.store import InstanceStore

logger = logging.getLogger(__name__)

ANONYMOUS = "STOWRS-ANY"  # the calling name of clients when `accept_any` is on and they sent no known credentials
CHUNK = 1024 * 1024
STUDIES_PATH = re.compile(r"^/studies(?:/(?P<study>[0-9.]{1,64}))?/?$")
NATIVE_DICOM_MODEL = "http://dicom.nema.org/PS3.19/models/NativeDICOM"


class _Refused(Exception):
    """A request answered with an HTTP error before its instances are looked at."""

    def __init__(self, code: HTTPStatus, reason: str, outcome: AuditOutcome = AuditOutcome.FAILED) -> None:
        super().__init__(reason)
        self.code, self.reason, self.outcome = code, reason, outcome


@dataclass
class _Request:
    """What one request did, for its audit record."""

    peer_host: str
    peer_port: int
    tls: bool
    subject: str = ""
    client: str = ""
    outcomes: list[PartOutcome] = field(default_factory=list)


def report_dataset(outcomes: list[PartOutcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 I.2): stored instances referenced, failed ones with their reason.
    Retrieve URLs are empty: this node does not serve WADO-RS."""
    ds = Dataset()
    ds.RetrieveURL = ""
    stored, failed = [o for o in outcomes if o.stored], [o for o in outcomes if not o.stored]
    if stored:
        ds.ReferencedSOPSequence = [_item(o) for o in stored]
    if failed:
        ds.FailedSOPSequence = [_item(o) for o in failed]
    return ds


def _item(outcome: PartOutcome) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if outcome.stored:
        item.RetrieveURL = ""
    else:
        item.FailureReason = outcome.status
    return item


def to_xml(ds: Dataset) -> bytes:
    """A data set as PS3.19 Native DICOM Model XML (the value types a status report holds: text, numbers, SQ)."""
    root = ElementTree.Element("NativeDicomModel", xmlns=NATIVE_DICOM_MODEL)
    _xml_elements(root, ds)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _xml_elements(parent: ElementTree.Element, ds: Dataset) -> None:
    for element in ds:
        attribute = ElementTree.SubElement(
            parent, "DicomAttribute", tag=f"{element.tag:08X}", vr=element.VR, keyword=element.keyword
        )
        if element.VR == "SQ":
            for number, item in enumerate(element.value, 1):
                _xml_elements(ElementTree.SubElement(attribute, "Item", number=str(number)), item)
            continue
        values = element.value if element.VM > 1 else [element.value] if element.value not in (None, "") else []
        for number, value in enumerate(values, 1):
            ElementTree.SubElement(attribute, "Value", number=str(number)).text = str(value)


def wants_xml(accept: str) -> bool:
    """Whether the Accept header asks for application/dicom+xml (and not for JSON): JSON is the default."""
    kinds = {media_type(part)[0] for part in accept.split(",") if part.strip()}
    return "application/dicom+xml" in kinds and not kinds & {"application/dicom+json", "application/json"}


class DicomWebServer:
    """The STOW-RS listener. `start()` binds and serves in a thread; `stop()` stops listening."""

    def __init__(
        self,
        settings: DicomWebServerSettings,
        ae_title: str,
        store: InstanceStore,
        trail: AuditTrail,
        tls_context: ssl.SSLContext | None = None,
        on_stored: Callable[[str], None] | None = None,
        observe: Callable[[StoreObservation], None] | None = None,
        max_inflated_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self.ae_title = ae_title
        self.store = store
        self.trail = trail
        self.tls_context = tls_context
        self.on_stored = on_stored
        self.observe = observe
        self.max_inflated_bytes = max_inflated_bytes
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_requests)
        self._verified: set[str] = set()  # digests of Basic credentials already checked (PBKDF2 is slow on purpose)
        self._server: ThreadingHTTPServer | None = None

    def start(self, port: int | None = None) -> int:
        """Listen (non-blocking); returns the bound port. Raises OSError when the port cannot be bound."""
        handler = type("Handler", (_Handler,), {"node": self, "timeout": self.settings.timeout_s})
        server = _Server((self.settings.host, self.settings.port if port is None else port), handler)
        if self.tls_context is not None:
            # The handshake happens in the request's thread (`_Handler.setup`), never in the accepting one.
            server.socket = self.tls_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        threading.Thread(target=server.serve_forever, name="immunode-dicomweb", daemon=True).start()
        bound = server.server_address[1]
        scheme = "HTTPS" if self.tls_context else "HTTP"
        logger.info("DICOMweb STOW-RS listening on %s:%d (%s)", self.settings.host, bound, scheme)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- authentication ------------------------------------------------------------------------------------------

    def client_for(self, authorization: str, host: str) -> str | None:
        """The calling name of the client these credentials (from `host`) belong to; None: not authenticated."""
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        candidates = [c for c in self.settings.clients if _from_network(c, host)]
        found: DicomWebClient | None = None
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            for client in candidates:
                if client.username is not None and hmac.compare_digest(user.encode(), client.username.encode()):
                    if self._password_ok(client, password):
                        found = client
                    break
        elif scheme == "bearer" and credentials.strip():
            digest = hashlib.sha256(credentials.strip().encode()).hexdigest()
            found = next(
                (c for c in candidates if c.token_sha256 and hmac.compare_digest(digest, c.token_sha256)), None
            )
        if found is not None:
            return found.name
        return ANONYMOUS if self.settings.accept_any else None

    def _password_ok(self, client: DicomWebClient, password: str) -> bool:
        key = hashlib.sha256(f"{client.name}\0{client.password_hash}\0{password}".encode()).hexdigest()
        if key in self._verified:
            return True
        if check_password(password, client.password_hash):  # type: ignore[arg-type]
            if len(self._verified) < 4096:
                self._verified.add(key)
            return True
        return False

    # --- storing ---------------------------------------------------------------------------------------------------

    def store_parts(self, request: _Request, boundary: str, body: Iterator[bytes], study: str | None) -> None:
        """Receive the whole body to files, then check and store each part (a body cut short stores nothing)."""
        with PartFiles(boundary, self.store.layout.receiving) as parts:
            for chunk in body:
                parts.feed(chunk)
            received = parts.finish()
            if not received:
                raise _Refused(HTTPStatus.BAD_REQUEST, "the body holds no instance")
            for part in received:
                started = time.perf_counter()
                outcome = store_part(self.store, part, request.client, self.max_inflated_bytes, study)
                request.outcomes.append(outcome)
                if self.observe is not None:
                    seconds = time.perf_counter() - started
                    self.observe(StoreObservation(request.client, outcome.status, part.size, seconds))
                if outcome.stored:
                    if self.on_stored is not None:
                        self.on_stored(outcome.study_instance_uid)
                else:
                    logger.warning(
                        "STOW-RS part from %r refused with 0x%04X: %s", request.client, outcome.status, outcome.reason
                    )
                    self.trail.event(
                        status.refusal_event(
                            "STOW-RS",
                            outcome.sop_instance_uid,
                            request.client,
                            outcome.status,
                            outcome.reason,
                            outcome.study_instance_uid,
                        )
                    )

    def audit(self, request: _Request, path: str, code: int, detail: str, outcome: AuditOutcome, at: object) -> None:
        stored = [o for o in request.outcomes if o.stored]
        self.trail.audit(
            AuditEntry(
                direction=AuditDirection.INBOUND,
                kind=AuditKind.STOW,
                outcome=outcome,
                calling_ae_title=request.client,
                called_ae_title=self.ae_title,
                peer_host=request.peer_host,
                peer_port=request.peer_port,
                tls=request.tls,
                tls_peer_subject=request.subject,
                detail=f"POST {path[:120]}: HTTP {code}" + (f"; {detail}" if detail else ""),
                instances=len(stored),
                study_uids=tuple(dict.fromkeys(o.study_instance_uid for o in stored)),
                at=at,  # type: ignore[arg-type]
            )
        )


def _from_network(client: DicomWebClient, host: str) -> bool:
    if client.host is None:
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(client.host, strict=False)
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: object, client_address: tuple) -> None:
        # A client that drops the connection or fails the TLS handshake: no traceback on stderr.
        logger.debug("DICOMweb connection from %s ended with an error", client_address[0], exc_info=True)


def _outcome_code(outcomes: list[PartOutcome]) -> tuple[HTTPStatus, AuditOutcome]:
    stored = sum(o.stored for o in outcomes)
    if stored == len(outcomes):
        return HTTPStatus.OK, AuditOutcome.COMPLETED
    if stored:
        return HTTPStatus.ACCEPTED, AuditOutcome.PARTIAL
    if all(o.status == status.OUT_OF_RESOURCES for o in outcomes):
        return HTTPStatus.SERVICE_UNAVAILABLE, AuditOutcome.FAILED
    return HTTPStatus.CONFLICT, AuditOutcome.FAILED


class _Handler(BaseHTTPRequestHandler):
    node: DicomWebServer
    protocol_version = "HTTP/1.1"
    server_version = "immunode"

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        logger.debug("dicomweb %s %s", self.address_string(), format % args)

    def _send(self, code: HTTPStatus, body: bytes = b"", content_type: str = "text/plain", close: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if code == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="immunode", Bearer realm="immunode"')
        if code == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "60")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed  # noqa: N815 - http.server's naming

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        node = self.node
        started = utcnow()
        host, port = self.client_address[0], self.client_address[1]
        secure = isinstance(self.connection, ssl.SSLSocket)
        subject = describe_subject(self.connection.getpeercert()) if secure else ""
        request = _Request(host, port, secure, subject)
        path = urlsplit(self.path).path
        match = STUDIES_PATH.match(path)
        if match is None:
            body = b"STOW-RS only: POST /studies or /studies/{StudyInstanceUID}\n"
            self._send(HTTPStatus.NOT_FOUND, body, close=True)
            return
        if not node._slots.acquire(blocking=False):
            node.audit(request, path, 503, "too many requests at once", AuditOutcome.REJECTED, started)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many requests at once; retry later\n", close=True)
            return
        try:
            self._store(request, path, match.group("study"), started)
        finally:
            node._slots.release()

    def _store(self, request: _Request, path: str, study: str | None, started: object) -> None:
        node = self.node
        try:
            client = node.client_for(self.headers.get("Authorization", ""), request.peer_host)
            if client is None:
                raise _Refused(HTTPStatus.UNAUTHORIZED, "no valid credentials", AuditOutcome.REJECTED)
            request.client = client
            if study is not None and not UID_PATTERN.match(study):
                raise _Refused(HTTPStatus.BAD_REQUEST, "the study in the path is not a UID")
            boundary = self._boundary()
            length = self._length()
            node.store.layout.check_free_space(length or 0)
            node.store_parts(request, boundary, self._body(length), study)
        except _Refused as refused:
            logger.warning("STOW-RS from %s refused: HTTP %d %s", request.peer_host, refused.code, refused.reason)
            node.audit(request, path, refused.code, refused.reason, refused.outcome, started)
            self._send(refused.code, f"{refused.reason}\n".encode(), close=True)
            return
        except BadMultipart as error:
            node.audit(request, path, 400, f"nothing stored: {error}", AuditOutcome.FAILED, started)
            self._send(HTTPStatus.BAD_REQUEST, f"{error}\n".encode(), close=True)
            return
        except OutOfResources as error:
            node.audit(request, path, 503, f"nothing stored: {error}", AuditOutcome.FAILED, started)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{error}\n".encode(), close=True)
            return
        except OSError as error:  # the connection dropped or timed out mid-body
            self.close_connection = True
            node.audit(request, path, 0, f"nothing stored: connection lost: {error}", AuditOutcome.ABORTED, started)
            return
        code, outcome = _outcome_code(request.outcomes)
        refused = [o for o in request.outcomes if not o.stored]
        detail = f"{len(request.outcomes) - len(refused)} stored, {len(refused)} refused" + (
            f": {'; '.join(sorted({f'0x{o.status:04X} {o.reason}' for o in refused}))}" if refused else ""
        )
        node.audit(request, path, code, detail, outcome, started)  # recorded before the client hears of it
        report = report_dataset(request.outcomes)
        if wants_xml(self.headers.get("Accept", "")):
            self._send(code, to_xml(report), "application/dicom+xml")
        else:
            self._send(code, json.dumps(report.to_json_dict()).encode(), "application/dicom+json")

    def _boundary(self) -> str:
        kind, params = media_type(self.headers.get("Content-Type", ""))
        if kind != "multipart/related":
            raise _Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"{kind} is not multipart/related")
        if media_type(params.get("type", DICOM))[0] != DICOM:
            raise _Refused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"type={params['type'][:64]!r}: only {DICOM} instances are accepted"
            )
        if not params.get("boundary"):
            raise _Refused(HTTPStatus.BAD_REQUEST, "multipart/related without a boundary")
        return params["boundary"]

    def _length(self) -> int | None:
        """The declared body length (None: chunked); refused when absent or beyond the limit."""
        limit = self.node.settings.max_request_mb * 1024 * 1024
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        declared = self.headers.get("Content-Length")
        if declared is None or not declared.strip().isdigit():
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "neither Content-Length nor chunked transfer encoding")
        if int(declared) > limit:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body exceeds {limit // (1024 * 1024)} MB")
        return int(declared)

    def _body(self, length: int | None) -> Iterator[bytes]:
        """The request body in chunks (de-chunked when chunked); a body cut short raises BadMultipart."""
        limit = self.node.settings.max_request_mb * 1024 * 1024
        if length is not None:
            remaining = length
            while remaining:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    raise BadMultipart(f"the body ends {remaining} bytes before its Content-Length")
                remaining -= len(chunk)
                yield chunk
            return
        total = 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadMultipart("broken chunked transfer encoding") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                return
            total += size
            if total > limit:
                raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body exceeds {limit // (1024 * 1024)} MB")
            while size:
                chunk = self.rfile.read(min(CHUNK, size))
                if not chunk:
                    raise BadMultipart("the chunked body is cut short")
                size -= len(chunk)
                yield chunk
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadMultipart("broken chunked transfer encoding")
