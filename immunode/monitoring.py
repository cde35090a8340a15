"""Monitoring: Prometheus metrics, liveness and readiness, and a status page, served over HTTP by the node.

- `/metrics`: Prometheus text format (prometheus_client, a registry per node). Counted in the process: C-STOREs
  by status and calling AE, bytes received, store latency. Read from the index at each scrape (the index is the
  source of truth, and it is shared by several nodes): studies completed, jobs by pipeline and state, job
  durations, deliveries by state, dead letters, queue depth, audit records; and free disk of the storage root.
- `/healthz` (liveness): the process answers and its scheduler runs. `/readyz` (readiness): the SCP listens,
  the index answers, the storage root has its reserve free; 503 with the reasons otherwise.
- `/`: the status page (`immunode.status_page`: the health line, the study list with search, filter and paging,
  failures with reasons, deliveries and dead letters with a retry action, refusals and the audit trail), refreshing
  itself. Bound to localhost by default; on any
  other address HTTP basic authentication is required (`monitoring.username`, `monitoring.password_hash`) and the
  retry action also checks that the request comes from the page itself (Origin/Referer).

Every request must name the server by one of its own names (`answered_hosts`: `monitoring.allowed_hosts`, or
the address bound) in its Host header, and any Origin must be one of them too: a page of another site whose name
was rebound to this address (DNS rebinding) gets 403, as does a cross-origin request; a request naming the
server by a name that is not localhost needs authentication.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text

from common.passwords import check_password, hash_password  # noqa: F401 - hash_password: the CLI imports it here
from common.states import JobState
from dicom_node.types import StoreObservation
from immunode import status_page
from immunode.config import LOCALHOST_NAMES, MonitoringSettings, is_loopback
from immunode.snapshot import StatusSnapshot
from storage import audit, deliveries, jobs, studies
from storage.database import Database
from storage.errors import IndexOutage, IndexUnavailable
from storage.overview import StudyQuery
from storage.schema import DeliveryState

logger = logging.getLogger(__name__)

JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
QUEUED = (JobState.PENDING, JobState.PAIRING, JobState.WAITING_BASELINE)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]


class NodeMetrics:
    """The node's metrics: in-process counters fed by the SCP, and a collector reading the index at scrape."""

    def __init__(self, database: Database, storage_root: object) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "immunode_instances_received",
            "C-STORE requests answered, by DICOM status (hex) and calling AE title",
            ["status", "calling_ae"],
            registry=self.registry,
        )
        self.received_bytes = Counter(
            "immunode_received_bytes", "Bytes of data sets received by C-STORE", registry=self.registry
        )
        self.store_seconds = Histogram(
            "immunode_store_seconds",
            "Time from a C-STORE data set received to its answer (validate, write, fsync, index)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.registry.register(_IndexCollector(database, storage_root))

    def observe(self, observation: StoreObservation) -> None:
        self.received.labels(f"0x{observation.status:04X}", observation.calling_ae_title[:16]).inc()
        self.received_bytes.inc(observation.size_bytes)
        self.store_seconds.observe(observation.seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _IndexCollector:
    def __init__(self, database: Database, storage_root: object) -> None:
        self.database = database
        self.storage_root = storage_root

    def collect(self) -> Iterator[object]:
        health = self.database.health
        free = shutil.disk_usage(self.storage_root).free
        yield GaugeMetricFamily("immunode_storage_free_bytes", "Free space under the storage root", free)
        yield GaugeMetricFamily(
            "immunode_index_up", "1 while the index answers this node, 0 during an outage", int(health.available)
        )
        yield CounterMetricFamily("immunode_index_outages", "Outages of the index this node has seen", health.outages)
        yield CounterMetricFamily(
            "immunode_index_outage_seconds",
            "Time the index could not be reached, in outages that ended and the current one",
            health.outage_seconds + health.down_for(),
        )
        try:
            with self.database.session() as session:
                by_pipeline = jobs.job_counts_by_pipeline(session)
                durations = jobs.finished_job_seconds(session)
                delivery_counts = deliveries.delivery_counts(session)
                completed = studies.completed_study_count(session)
                audit_counts = audit.audit_counts(session)
        except IndexOutage:
            return  # the figures read from the index are left out while it cannot be reached (immunode_index_up 0)
        yield CounterMetricFamily("immunode_studies_completed", "Studies completed (quiet) and routed", completed)
        job_gauge = GaugeMetricFamily("immunode_jobs", "Jobs by pipeline and state", labels=["pipeline", "state"])
        for (pipeline, state), count in sorted(by_pipeline.items(), key=lambda item: (item[0][0], item[0][1].value)):
            job_gauge.add_metric([pipeline, state.value], count)
        yield job_gauge
        yield GaugeMetricFamily(
            "immunode_queue_depth",
            "Jobs waiting to run (pending, pairing, waiting for a baseline)",
            sum(count for (_, state), count in by_pipeline.items() if state in QUEUED),
        )
        histogram = HistogramMetricFamily(
            "immunode_job_duration_seconds",
            "Run time of finished jobs (the latest 10,000), by pipeline",
            labels=["pipeline"],
        )
        for pipeline in sorted({p for p, _ in durations}):
            values = [seconds for p, seconds in durations if p == pipeline]
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in JOB_SECONDS_BUCKETS]
            histogram.add_metric([pipeline], buckets + [("+Inf", len(values))], sum(values))
        yield histogram
        delivery_gauge = GaugeMetricFamily("immunode_deliveries", "Deliveries by state", labels=["state"])
        for state in DeliveryState:
            delivery_gauge.add_metric([state.value], delivery_counts.get(state, 0))
        yield delivery_gauge
        yield GaugeMetricFamily(
            "immunode_dead_letters",
            "Deliveries that used up their attempts (immunode retry)",
            delivery_counts.get(DeliveryState.DEAD, 0),
        )
        audit_counter = CounterMetricFamily(
            "immunode_audit_records", "Audit records", labels=["direction", "kind", "outcome"]
        )
        for (direction, kind, outcome), count in sorted(audit_counts.items()):
            audit_counter.add_metric([direction, kind, outcome], count)
        yield audit_counter


# --- the HTTP server --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringHooks:
    """What the server asks the node (the node passes these in; the server imports nothing of the service)."""

    metrics: NodeMetrics
    snapshot: Callable[[StudyQuery], StatusSnapshot]  # the status page's one reading of the index
    alive: Callable[[], bool]
    ready: Callable[[], Readiness]
    retry_delivery: Callable[[int], int]


def answered_hosts(settings: MonitoringSettings) -> frozenset[str]:
    """The names a request may give in its Host header and its Origin: `monitoring.allowed_hosts`, or by default the
    address bound, with the localhost names on a loopback bind; on a wildcard bind (0.0.0.0, ::) the machine's
    name and addresses, and the localhost names."""
    if settings.allowed_hosts is not None:
        names = set(settings.allowed_hosts)
    else:
        names = {settings.host}
        if is_loopback(settings.host) or settings.host in WILDCARDS:
            names |= set(LOCALHOST_NAMES)
        if settings.host in WILDCARDS:
            names |= {socket.gethostname(), socket.getfqdn()}
            try:
                names |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
            except OSError:
                pass  # a machine whose own name does not resolve: its name and localhost only
    return frozenset(name.strip("[]").lower().rstrip(".") for name in names if name)


WILDCARDS = ("0.0.0.0", "::", "")


def _host_of(value: str, origin: bool = False) -> str | None:
    """The host name in a Host header (`name[:port]`) or an Origin/Referer (`scheme://name[:port]...`), lower
    case, IPv6 without brackets; None when there is none or it does not parse (an Origin of `null`)."""
    if not origin:
        value = "//" + value
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if origin and parts.scheme not in ("http", "https"):
        return None
    return (parts.hostname or "").rstrip(".") or None


class MonitoringServer:
    def __init__(self, settings: MonitoringSettings, hooks: MonitoringHooks) -> None:
        self.settings = settings
        self.hooks = hooks
        self.hosts = answered_hosts(settings)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        handler = type("Handler", (_Handler,), {"monitor": self})
        self._server = ThreadingHTTPServer((self.settings.host, self.settings.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="immunode-monitoring", daemon=True).start()
        port = self._server.server_address[1]
        logger.info("monitoring on http://%s:%d/ (metrics, healthz, readyz, status page)", self.settings.host, port)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    monitor: MonitoringServer
    server_version = "immunode"
    named_host = ""  # the host name the request's Host header gives, once checked

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        logger.debug("monitoring %s %s", self.address_string(), format % args)

    def _permitted(self) -> bool:
        """The request names this server in its Host header (not a name rebound to its address), any Origin is one
        of its names, and it is authenticated where that is needed; answered (403/401) otherwise."""
        host = _host_of(self.headers.get("Host", ""))
        if host is None or host not in self.monitor.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"unknown Host: not a name this server answers to\n", "text/plain")
            return False
        origin = self.headers.get("Origin")
        if origin is not None and _host_of(origin, origin=True) not in self.monitor.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"cross-origin requests are refused\n", "text/plain")
            return False
        self.named_host = host
        return True

    def _authorised(self) -> bool:
        settings = self.monitor.settings
        if settings.username is None or settings.password_hash is None:
            if is_loopback(self.named_host):
                return True  # localhost without credentials configured (the settings refuse it elsewhere)
            self._send(HTTPStatus.FORBIDDEN, b"authentication is required off localhost\n", "text/plain")
            return False
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if hmac.compare_digest(user, settings.username) and check_password(password, settings.password_hash):
                return True
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", 'Basic realm="immunode"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._permitted():
            return
        url = urlsplit(self.path)
        path = url.path
        hooks = self.monitor.hooks
        if path == "/healthz":  # liveness answers without authentication (for the container's healthcheck)
            alive = hooks.alive()
            status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, b"ok\n" if alive else b"dead\n", "text/plain")
            return
        if path == "/readyz":
            readiness = hooks.ready()
            body = json.dumps({"ready": readiness.ready, "reasons": list(readiness.reasons)}).encode()
            self._send(HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json")
            return
        if not self._authorised():
            return
        if path == "/metrics":
            self._send(HTTPStatus.OK, hooks.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/":
            query, problems = status_page.parse_query(parse_qs(url.query))
            try:
                page = status_page.render(hooks.snapshot(query), self.monitor.settings.refresh_s, problems)
            except IndexUnavailable as error:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{error}\n".encode(), "text/plain; charset=utf-8")
                return
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        if not self._permitted() or not self._authorised():
            return
        path = urlsplit(self.path).path
        # The action is taken from the status page only: a form posted from it names one of this server's names.
        origin = self.headers.get("Origin") or self.headers.get("Referer") or ""
        if _host_of(origin, origin=True) not in self.monitor.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"the retry action is taken from the status page only\n", "text/plain")
            return
        prefix = "/retry/delivery/"
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            try:
                requeued = self.monitor.hooks.retry_delivery(int(path[len(prefix) :]))
            except IndexUnavailable as error:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{error}\n".encode(), "text/plain; charset=utf-8")
                return
            logger.info("status page: delivery %s re-queued (%d)", path[len(prefix) :], requeued)
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")


def index_answers(database: Database) -> str | None:
    """None when the index answers a trivial query, else why not."""
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # any driver error means not ready
        return f"index: {error.__class__.__name__}: {str(error)[:200]}"
    return None
