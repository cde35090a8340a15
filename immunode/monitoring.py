"""Monitoring: Prometheus metrics, liveness and readiness, and a status page, served over HTTP by the node.

- `/metrics`: Prometheus text format (prometheus_client, a registry per node). Counted in the process: C-STOREs
  by status and calling AE, bytes received, store latency. Read from the index at each scrape (the index is the
  source of truth, and it is shared by several nodes): studies completed, jobs by pipeline and state, job
  durations, deliveries by state, dead letters, queue depth, audit records; and free disk of the storage root.
- `/healthz` (liveness): the process answers and its scheduler runs. `/readyz` (readiness): the SCP listens,
  the index answers, the storage root has its reserve free; 503 with the reasons otherwise.
- `/`: the status page (studies with their jobs and results, failures with reasons, deliveries and dead letters
  with a retry action, refusals and the audit trail), refreshing itself. Bound to localhost by default; on any
  other address HTTP basic authentication is required (`monitoring.username`, `monitoring.password_hash`) and the
  retry action also checks that the request comes from the page itself (Origin/Referer).
"""

from __future__ import annotations

import base64
import hmac
import html
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text

from common.passwords import check_password, hash_password  # noqa: F401 - hash_password: the CLI imports it here
from common.states import JobState
from dicom_node.types import StoreObservation
from immunode.config import MonitoringSettings
from storage import audit, deliveries, events, jobs, studies
from storage.database import Database
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
        with self.database.session() as session:
            by_pipeline = jobs.job_counts_by_pipeline(session)
            durations = jobs.finished_job_seconds(session)
            delivery_counts = deliveries.delivery_counts(session)
            completed = studies.completed_study_count(session)
            audit_counts = audit.audit_counts(session)
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
        free = shutil.disk_usage(self.storage_root).free
        yield GaugeMetricFamily("immunode_storage_free_bytes", "Free space under the storage root", free)


# --- the HTTP server --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringHooks:
    """What the server asks the node (the node passes these in; the server imports nothing of the service)."""

    metrics: NodeMetrics
    database: Database
    alive: Callable[[], bool]
    ready: Callable[[], Readiness]
    retry_delivery: Callable[[int], int]


class MonitoringServer:
    def __init__(self, settings: MonitoringSettings, hooks: MonitoringHooks) -> None:
        self.settings = settings
        self.hooks = hooks
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

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        logger.debug("monitoring %s %s", self.address_string(), format % args)

    def _authorised(self) -> bool:
        settings = self.monitor.settings
        if settings.username is None or settings.password_hash is None:
            return True  # only possible on localhost (the settings refuse it elsewhere)
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
        path = urlsplit(self.path).path
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
            page = status_page(hooks.database, self.monitor.settings.refresh_s)
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        path = urlsplit(self.path).path
        origin = self.headers.get("Origin") or self.headers.get("Referer") or ""
        host = self.headers.get("Host", "")
        if not origin or urlsplit(origin).netloc != host:
            self._send(HTTPStatus.FORBIDDEN, b"the retry action is taken from the status page only\n", "text/plain")
            return
        prefix = "/retry/delivery/"
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            requeued = self.monitor.hooks.retry_delivery(int(path[len(prefix) :]))
            logger.info("status page: delivery %s re-queued (%d)", path[len(prefix) :], requeued)
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")


# --- the status page ---------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.5em} table{border-collapse:collapse;width:100%;font-size:.85em}
th,td{border:1px solid #ccc;padding:.3em;text-align:left;vertical-align:top} th{background:#eee}
code{font-size:.9em} .empty{color:#777} .FAILED{color:#b00;font-weight:bold} .SUCCEEDED{color:#070}
.banner{background:#ffd;padding:.5em;border:1px solid #cc9}
"""
DELIVERY_COLUMNS = ["id", "kind", "instance", "destination", "state", "attempts", "last error", ""]


def status_page(database: Database, refresh_s: int, limit: int = 50) -> str:
    """The page: every value escaped (UIDs, AE titles and reasons come from the network)."""
    e = html.escape
    with database.session() as session:
        recent = studies.recent_studies(session, limit)
        job_list = jobs.recent_jobs(session, limit * 2)
        unsent = deliveries.unsent_deliveries(session)
        counts = deliveries.delivery_counts(session)
        problems = events.recent_events(session, limit)
        trail = audit.audit_records(session, limit=limit)
    jobs_of: dict[str, list] = {}
    for job in job_list:
        jobs_of.setdefault(job.study_instance_uid, []).append(job)
    study_rows = []
    for study in recent:
        described = "<br>".join(
            f"{e(j.pipeline)} <span class='state {e(j.state.value)}'>{e(j.state.value)}</span>"
            + (f": {e(j.summary[:200])}" if j.summary else "")
            for j in jobs_of.get(study.study_instance_uid, [])
        )
        study_rows.append(
            [
                f"<code>{e(study.study_instance_uid)}</code>",
                e(str(study.state)),
                f"{study.last_received_at:%Y-%m-%d %H:%M:%S}Z",
                described or "-",
            ]
        )
    failure_rows = [
        [str(j.job_id), e(j.pipeline), f"<code>{e(j.study_instance_uid)}</code>", e(j.error)]
        for j in job_list
        if j.state is JobState.FAILED
    ]
    delivery_rows = [
        [
            str(d.delivery_id),
            e(d.kind.value),
            f"<code>{e(d.sop_instance_uid)}</code>",
            e(d.destination),
            e(str(d.state)),
            str(d.attempts),
            e(d.last_error or "not yet attempted"),
            f"<form method=post action='/retry/delivery/{d.delivery_id}'><button>retry</button></form>"
            if str(d.state).endswith("DEAD")
            else "",
        ]
        for d in unsent
    ]
    problem_rows = [
        [f"{p.at:%Y-%m-%d %H:%M:%S}Z", e(p.level), f"<code>{e(p.study_instance_uid)}</code>", e(p.message)]
        for p in problems
    ]
    audit_rows = [[f"{a.at:%Y-%m-%d %H:%M:%S}Z", e(a.line().removeprefix("audit "))] for a in trail]
    dead = counts.get(DeliveryState.DEAD, 0)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content="{int(refresh_s)}">
<title>immunode status</title>
<style>{STYLE}</style></head><body>
<h1>immunode status</h1>
<p class=banner>Research use only. This page reloads every {int(refresh_s)} s.
Deliveries: {", ".join(f"{s.value} {counts.get(s, 0)}" for s in DeliveryState)}; dead letters: {dead}.</p>
<h2>Studies, their jobs and results</h2>
{_table(["study", "state", "last instance", "jobs"], study_rows, "no studies received")}
<h2>Failures</h2>
{_table(["job", "pipeline", "study", "reason"], failure_rows, "no failed jobs")}
<h2>Deliveries not sent, dead letters</h2>
{_table(DELIVERY_COLUMNS, delivery_rows, "every result delivered")}
<h2>Refusals and problems</h2>
{_table(["at", "level", "study", "message"], problem_rows, "none")}
<h2>Audit trail</h2>
{_table(["at", "record"], audit_rows, "no audit records")}
</body></html>
"""


def index_answers(database: Database) -> str | None:
    """None when the index answers a trivial query, else why not."""
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # any driver error means not ready
        return f"index: {error.__class__.__name__}: {str(error)[:200]}"
    return None
