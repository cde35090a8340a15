"""The audit trail and the refusal record: written to the index, or spooled to disk while it is unavailable.

Every inbound connection that sent anything, every association (accepted or rejected) and every outbound
association (results sent, query/retrieve) leaves one `AuditRecord`; refusals of instances leave an
`Event`. When the index cannot take them (database down, disk full at commit), they are appended to
`<root>/spool/records.jsonl` (fsync'd) and written to the index by `flush_spool()`, which the service
runs at start-up and on every poll. The log carries one line per audit record either way.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from common.types import from_attributes
from storage.database import Database
from storage.errors import IndexOutage, StorageError
from storage.schema import AuditDirection, AuditKind, AuditOutcome, AuditRecord, Event, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    direction: AuditDirection
    kind: AuditKind
    outcome: AuditOutcome
    calling_ae_title: str = ""
    called_ae_title: str = ""
    peer_host: str = ""
    peer_port: int = 0
    tls: bool = False
    tls_peer_subject: str = ""
    detail: str = ""
    instances: int = 0
    study_uids: tuple[str, ...] = ()
    at: datetime = field(default_factory=utcnow)
    ended_at: datetime = field(default_factory=utcnow)

    def line(self) -> str:
        """The one log line of this record (no patient data: AE titles, addresses, counts, UIDs)."""
        if self.direction is AuditDirection.LOCAL:
            studies = " ".join(self.study_uids)
            counted = f"{self.instances} instance(s) of {studies}"
            return f"audit {self.kind.value}: {self.outcome.value}, {counted} ({self.detail})"
        tls = f"TLS {self.tls_peer_subject or 'no client certificate'}" if self.tls else "plain"
        studies = f" studies {' '.join(self.study_uids[:5])}" + (" ..." if len(self.study_uids) > 5 else "")
        return (
            f"audit {self.direction.value} {self.kind.value} {self.calling_ae_title!r} -> {self.called_ae_title!r} "
            f"{self.peer_host}:{self.peer_port} {tls}: {self.outcome.value}, {self.instances} instance(s)"
            f"{studies if self.study_uids else ''}{f' ({self.detail})' if self.detail else ''}"
        )

    def row(self) -> dict:
        values = asdict(self)
        values["study_uids"] = list(self.study_uids)
        values["calling_ae_title"] = self.calling_ae_title[:16]
        values["called_ae_title"] = self.called_ae_title[:16]
        values["peer_host"] = self.peer_host[:64]
        values["detail"] = self.detail[:2000]
        return values


@dataclass(frozen=True)
class EventEntry:
    level: str
    message: str
    study_instance_uid: str = ""
    at: datetime = field(default_factory=utcnow)


class AuditTrail:
    """Writes audit records and events to the index; spools them when the index is unavailable."""

    def __init__(self, database: Database, spool_folder: Path) -> None:
        self.database = database
        self.spool_file = Path(spool_folder) / "records.jsonl"
        self._lock = threading.Lock()

    def audit(self, entry: AuditEntry) -> None:
        logger.info(entry.line())
        self._write("audit", entry.row())

    def event(self, entry: EventEntry) -> None:
        self._write("event", asdict(entry))

    def _write(self, table: str, values: dict) -> None:
        try:
            with self.database.session() as session:
                _insert(session, table, values)
            return
        except IndexOutage:
            pass  # the outage is logged once, by the index's health; the record is spooled
        except StorageError as error:
            logger.error("index refused the %s record (%s): spooled to %s", table, error, self.spool_file)
        self._spool(table, values)

    def _spool(self, table: str, values: dict) -> None:
        line = json.dumps({"table": table, "values": values}, default=_json_default) + "\n"
        with self._lock:
            try:
                self.spool_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.spool_file, "a", encoding="utf-8") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:  # the disk is full too: this log line is the record that remains
                logger.error("%s record neither indexed nor spooled (%s): %s", table, error.strerror, line.strip())

    def spooled(self) -> int:
        with self._lock:
            return spooled_count(self.spool_file.parent)

    def flush_spool(self) -> int:
        """Write spooled records to the index (all in one transaction); returns how many were written."""
        with self._lock:
            if not self.spool_file.exists():
                return 0
            lines = [line for line in self.spool_file.read_text(encoding="utf-8").splitlines() if line.strip()]
            records = []
            for line in lines:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash while it was appended: the rest still counts
                    logger.error("spooled record not readable, left out: %r", line[:200])
            try:
                with self.database.session() as session:
                    for record in records:
                        _insert(session, record["table"], _from_json(record["values"]))
            except IndexOutage:
                return 0  # logged once by the index's health; written at a later poll
            except StorageError as error:
                logger.warning("spooled records not written yet: %s", error)
                return 0
            self.spool_file.unlink()
        if records:
            logger.info("%d spooled audit/refusal record(s) written to the index", len(records))
        return len(records)


def spooled_count(spool_folder: Path) -> int:
    """Records waiting in the spool for the index."""
    spool_file = Path(spool_folder) / "records.jsonl"
    if not spool_file.exists():
        return 0
    return sum(1 for line in spool_file.read_text(encoding="utf-8").splitlines() if line.strip())


def record_audit(session: Session, entry: AuditEntry) -> None:
    """An audit record written in the caller's transaction (it commits, or rolls back, with what it records)."""
    _insert(session, "audit", entry.row())


def _insert(session: Session, table: str, values: dict) -> None:
    model = AuditRecord if table == "audit" else Event
    session.execute(insert(model).values(**values))


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot spool {type(value).__name__}")


def _from_json(values: dict) -> dict:
    converted = dict(values)
    for key in ("at", "ended_at"):
        if isinstance(converted.get(key), str):
            converted[key] = datetime.fromisoformat(converted[key])
    for key, enum_type in (("direction", AuditDirection), ("kind", AuditKind), ("outcome", AuditOutcome)):
        if key in converted:
            converted[key] = enum_type(converted[key])
    return converted


def audit_records(session: Session, since: datetime | None = None, limit: int | None = None) -> list[AuditEntry]:
    """Audit records, newest first."""
    statement = select(AuditRecord).order_by(AuditRecord.id.desc())
    if since is not None:
        statement = statement.where(AuditRecord.at >= since)
    if limit is not None:
        statement = statement.limit(limit)
    return [
        from_attributes(AuditEntry, r, study_uids=tuple(r.study_uids or ())) for r in session.scalars(statement).all()
    ]


def audit_counts(session: Session) -> dict[tuple[str, str, str], int]:
    """(direction, kind, outcome) → number of audit records."""
    rows = session.execute(
        select(AuditRecord.direction, AuditRecord.kind, AuditRecord.outcome, func.count(AuditRecord.id)).group_by(
            AuditRecord.direction, AuditRecord.kind, AuditRecord.outcome
        )
    )
    return {(d.value, k.value, o.value): n for d, k, o, n in rows}
