"""The status snapshot: one reading of the index and the disk that the status page and `immunode status` both
print (they format it; neither queries anything itself).

It holds an overall health line (index reachable, free disk against the reserve and the retention watermark,
queue depth, failing jobs, dead letters, last instance received), one page of the study list (search, filter,
paging; patient names only when `monitoring.show_patient_names`), and the operational sections: failures, results
not sent with their next attempt, identity conflicts, quarantine, the last start-up, refused associations, problems
and the audit trail.
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from common.states import JobState
from immunode.config import Settings
from storage import audit, deliveries, events, integrity, jobs, overview, results, runs
from storage.audit import AuditEntry
from storage.database import Database
from storage.errors import StorageError
from storage.integrity import ConflictView, QuarantineView
from storage.overview import DeliveryCell, IndexFacts, JobCell, StudyPage, StudyQuery, StudyRow
from storage.runs import RunSummary
from storage.schema import AuditOutcome, DeliveryState, utcnow
from storage.types import DeliveryStatus, EventRecord, JobStatus, StudyVersions

MB = 1024 * 1024
FAILING_RECENTLY = timedelta(hours=24)


class Verdict(enum.Enum):
    OK = "OK"
    ATTENTION = "ATTENTION"  # working, but something waits for an administrator (failures, dead letters, disk)
    FAILING = "FAILING"  # the node cannot take studies: index unreachable, or the disk below its reserve


@dataclass(frozen=True)
class Health:
    verdict: Verdict
    reasons: tuple[str, ...]  # why not OK
    index_problem: str | None  # None: the index answered
    free_bytes: int | None  # under the storage root; None when it cannot be read
    reserve_bytes: int  # storage.min_free_mb: stores are refused below
    purge_below_bytes: int | None  # the retention's low watermark, if set
    facts: IndexFacts | None  # None when the index did not answer


@dataclass(frozen=True)
class StatusSnapshot:
    taken_at: datetime
    health: Health
    studies: StudyPage | None  # None when the index did not answer
    max_job_attempts: int
    patient_names: bool = False  # the rows carry patient names (`monitoring.show_patient_names`)
    job_counts: Mapping[JobState, int] = field(default_factory=dict)
    jobs: tuple[JobStatus, ...] = ()  # the newest (`limit`)
    delivery_counts: Mapping[DeliveryState, int] = field(default_factory=dict)
    unsent: tuple[DeliveryStatus, ...] = ()  # pending (with their next attempt) and dead
    conflicts: tuple[int, tuple[ConflictView, ...]] = (0, ())  # total, newest
    quarantined: tuple[int, tuple[QuarantineView, ...]] = (0, ())
    latest_run: RunSummary | None = None
    spooled: int = 0
    refused: tuple[AuditEntry, ...] = ()  # recent rejected or failed associations
    audit: tuple[AuditEntry, ...] = ()
    problems: tuple[EventRecord, ...] = ()
    versions: tuple[StudyVersions, ...] = ()  # the chains of result versions of the studies with newest results

    @property
    def failures(self) -> tuple[JobStatus, ...]:
        return tuple(j for j in self.jobs if j.state is JobState.FAILED)


def take_snapshot(
    settings: Settings, database: Database, query: StudyQuery = StudyQuery(), limit: int = 20
) -> StatusSnapshot:
    """Read everything the status shows, at once. An index that does not answer gives a FAILING health line and
    empty sections rather than an error."""
    now = utcnow()
    free = _free_bytes(settings)
    spooled = audit.spooled_count(settings.storage.root / "spool")
    try:
        with database.session() as session:
            facts = overview.index_facts(session, now, FAILING_RECENTLY)
            page = overview.study_page(session, query, settings.monitoring.show_patient_names)
            sections = dict(
                job_counts=jobs.job_counts(session),
                jobs=tuple(jobs.recent_jobs(session, limit)),
                delivery_counts=deliveries.delivery_counts(session),
                unsent=tuple(deliveries.unsent_deliveries(session)),
                conflicts=_total_and(integrity.conflicts(session, limit)),
                quarantined=_total_and(integrity.quarantined(session, limit)),
                latest_run=runs.latest_run(session),
                refused=tuple(
                    a for a in audit.audit_records(session, limit=200) if a.outcome is not AuditOutcome.COMPLETED
                )[:limit],
                audit=tuple(audit.audit_records(session, limit=limit)),
                problems=tuple(events.recent_events(session, limit)),
                versions=tuple(results.result_versions(session, limit)),
            )
    except StorageError as error:
        problem = f"index unreachable: {error}"
        return StatusSnapshot(
            now, _health(settings, free, None, problem), None, settings.workers.max_attempts, spooled=spooled
        )
    health = _health(settings, free, facts, None)
    names = settings.monitoring.show_patient_names
    return StatusSnapshot(now, health, page, settings.workers.max_attempts, names, spooled=spooled, **sections)


def _total_and(found: tuple[int, list]) -> tuple[int, tuple]:
    return found[0], tuple(found[1])


def _free_bytes(settings: Settings) -> int | None:
    try:
        return shutil.disk_usage(settings.storage.root).free
    except OSError:
        return None


def _health(settings: Settings, free: int | None, facts: IndexFacts | None, index_problem: str | None) -> Health:
    reserve = settings.storage.min_free_mb * MB
    below = settings.storage.retention.purge_below_free_mb
    watermark = None if below is None else below * MB
    failing: list[str] = []
    attention: list[str] = []
    if index_problem:
        failing.append(index_problem)
    if free is None:
        failing.append(f"storage root {settings.storage.root} cannot be read")
    elif free < reserve:
        failing.append(f"disk: {free // MB} MB free, below the {reserve // MB} MB reserve: stores are refused")
    elif watermark is not None and free < watermark:
        attention.append(f"disk: {free // MB} MB free, below the retention watermark of {below} MB")
    if facts is not None:
        if facts.failed_recently:
            attention.append(f"{facts.failed_recently} job(s) failed in the last 24 h")
        if facts.dead_letters:
            attention.append(f"{facts.dead_letters} dead letter(s) (results not sent; retry them)")
    verdict = Verdict.FAILING if failing else Verdict.ATTENTION if attention else Verdict.OK
    return Health(verdict, tuple(failing + attention), index_problem, free, reserve, watermark, facts)


def health_line(health: Health, now: datetime) -> str:
    """The one line both views print first."""
    parts = [health.verdict.value]
    if health.index_problem:
        parts.append("index UNREACHABLE")
    else:
        parts.append("index reachable")
    if health.free_bytes is not None:
        parts.append(f"disk {health.free_bytes // MB} MB free (reserve {health.reserve_bytes // MB} MB)")
    facts = health.facts
    if facts is not None:
        parts.append(f"queue {facts.queue_depth}, running {facts.running}")
        parts.append(f"failed jobs (24 h) {facts.failed_recently}")
        parts.append(f"dead letters {facts.dead_letters}")
        if facts.pending_deliveries:
            parts.append(f"deliveries pending {facts.pending_deliveries}, next {when(facts.next_delivery_at, now)}")
        parts.append(f"last received {when(facts.last_received_at, now)}")
    return " | ".join(parts)


def when(at: datetime | None, now: datetime) -> str:
    """A time as both views print it: UTC, with how far from now."""
    if at is None:
        return "never"
    seconds = int((at - now).total_seconds())
    ago = abs(seconds)
    span = f"{ago // 86400} d" if ago >= 86400 else f"{ago // 3600} h" if ago >= 3600 else f"{ago // 60} min"
    span = f"{ago} s" if ago < 60 else span
    return f"{at:%Y-%m-%d %H:%M:%S}Z ({'in ' + span if seconds > 0 else span + ' ago'})"


def job_detail(job: JobCell, max_attempts: int, now: datetime) -> str:
    """What follows a job's state in both views: its result, failure, next attempt or wait."""
    if job.state is JobState.SUCCEEDED:
        return job.summary[:300]
    if job.state is JobState.FAILED:
        return job.error[:300]
    if job.state is JobState.PENDING and job.attempts:
        return f"attempt {job.attempts} of {max_attempts} failed, retried at the next poll: {job.error[:200]}"
    if job.state is JobState.WAITING_BASELINE and job.waiting_until is not None:
        return f"waits for its baseline, runs without it {when(job.waiting_until, now)}"
    if job.state is JobState.RUNNING:
        return f"attempt {job.attempts} of {max_attempts}"
    return ""


def delivery_detail(delivery: DeliveryCell | DeliveryStatus, now: datetime) -> str:
    """A delivery's state for people: sent, its next attempt, or dead with the last error."""
    state = DeliveryState(delivery.state) if isinstance(delivery.state, str) else delivery.state
    if state is DeliveryState.SENT:
        sent_at = getattr(delivery, "sent_at", None)
        return "sent" + (f" {sent_at:%Y-%m-%d %H:%M:%S}Z" if sent_at else "")
    error = f": {delivery.last_error[:200]}" if delivery.last_error else ""
    if state is DeliveryState.DEAD:
        return f"DEAD after {delivery.attempts} attempt(s){error}"
    return f"{delivery.attempts} attempt(s), next {when(delivery.next_attempt_at, now)}{error}"


def results_text(row: StudyRow) -> str:
    """A study's result objects for people: "1 SEG, 1 SR (+2 earlier)"; "" when there are none."""
    kinds: dict[str, int] = {}
    for result in row.results:
        kinds[result.kind.value] = kinds.get(result.kind.value, 0) + 1
    shown = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    earlier = f" (+{row.earlier_results} earlier)" if row.earlier_results else ""
    return (shown or "none") + earlier if shown or earlier else ""
