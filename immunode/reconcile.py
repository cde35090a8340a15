"""Start-up reconciliation of the object store with the index.

A crash between the durable write of a received file and the commit of its index row (never acknowledged,
so the sender will have resent it or reported a failure) leaves a file under `objects/` that the index does
not know. At start-up, when the previous run did not stop cleanly (or no run is recorded), the day folders
from that run's start on are compared with the index. Each unknown file older than `GRACE_S` is checked as
a received instance is (`dicom_node.ingest.parse_received`, the whole data set) and
- indexed under its own patient, study and series when it is valid, complete and new;
- deleted when the same SOP Instance UID is indexed with the same bytes (the resent copy was kept);
- moved to `quarantine/`, with the reason in `quarantined_files`, otherwise (unreadable, invalid, another
  copy of the UID indexed with other bytes, or an identity conflict).
The counts go to the run's row, the log and `immunode status`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import select

from dicom_node.errors import ReceiveError
from dicom_node.ingest import parse_received
from storage import integrity, runs
from storage.database import Database
from storage.errors import IdentityMismatch, StorageError
from storage.files import FileLayout
from storage.schema import Instance
from storage.store import InstanceStore
from storage.types import InstanceHeader, StoreOutcome

logger = logging.getLogger(__name__)

GRACE_S = 60.0  # younger files may be in flight between write and commit (another node on the same root)
BATCH = 500


@dataclass(frozen=True)
class Reconciliation:
    scanned: int
    indexed: int
    duplicates_removed: int
    quarantined: int


def reconcile(database: Database, layout: FileLayout, store: InstanceStore, max_inflated_bytes: int) -> int:
    """Record this run and, if the last one did not stop cleanly, reconcile; returns this run's id."""
    with database.session() as session:
        start = runs.begin_run(session, socket.gethostname(), os.getpid())
    result = Reconciliation(0, 0, 0, 0)
    if start.reconcile:
        result = reconcile_files(database, layout, store, start.since, max_inflated_bytes)
    with database.session() as session:
        runs.record_reconciliation(session, start, result.indexed, result.quarantined)
    if start.unclean_runs or result.indexed or result.quarantined or result.duplicates_removed:
        logger.warning(
            "start-up reconciliation (%d earlier run(s) without a clean stop, day folders from %s): "
            "%d file(s) without index row among %d scanned: %d indexed, %d duplicate(s) removed, %d quarantined",
            len(start.unclean_runs),
            start.since or "the beginning",
            result.indexed + result.duplicates_removed + result.quarantined,
            result.scanned,
            result.indexed,
            result.duplicates_removed,
            result.quarantined,
        )
    return start.run_id


def reconcile_files(
    database: Database, layout: FileLayout, store: InstanceStore, since: date | None, max_inflated_bytes: int
) -> Reconciliation:
    scanned = indexed = duplicates = quarantined = 0
    cutoff = time.time() - GRACE_S
    candidates = [p for p in layout.object_files(since) if p.stat().st_mtime < cutoff]
    for start in range(0, len(candidates), BATCH):
        batch = candidates[start : start + BATCH]
        scanned += len(batch)
        relative = {layout.relative(p): p for p in batch}
        with database.session() as session:
            known = set(session.scalars(select(Instance.path).where(Instance.path.in_(list(relative)))).all())
        for rel, path in relative.items():
            if rel in known:
                continue
            outcome = _reconcile_one(database, layout, store, path, max_inflated_bytes)
            indexed += outcome == "indexed"
            duplicates += outcome == "duplicate"
            quarantined += outcome == "quarantined"
    return Reconciliation(scanned, indexed, duplicates, quarantined)


def _reconcile_one(database: Database, layout: FileLayout, store: InstanceStore, path: Path, limit: int) -> str:
    data = path.read_bytes()
    header = None
    try:
        header = parse_received(data, max_inflated_bytes=limit)
        outcome = store.index_existing(header, path, len(data), hashlib.sha256(data).hexdigest())
    except (ReceiveError, IdentityMismatch) as error:
        return _quarantine(database, layout, path, str(error), header)
    except StorageError:
        raise  # the index itself is unavailable: start-up stops, nothing is moved
    if outcome is StoreOutcome.NEW:
        logger.info("reconciled: %s indexed from %s", header.sop_instance_uid, layout.relative(path))
        return "indexed"
    if outcome is StoreOutcome.DUPLICATE_IDENTICAL:
        path.unlink()
        return "duplicate"
    return _quarantine(database, layout, path, "another copy of this SOP Instance UID is indexed", header)


def _quarantine(database: Database, layout: FileLayout, path: Path, reason: str, header: InstanceHeader | None) -> str:
    original = layout.relative(path)
    target = layout.quarantine(path)
    with database.session() as session:
        integrity.record_quarantine(
            session,
            layout.relative(target),
            original,
            reason,
            header.sop_instance_uid if header else "",
            header.study_instance_uid if header else "",
        )
    logger.warning("quarantined %s (was %s): %s", layout.relative(target), original, reason)
    return "quarantined"
