"""Retention: complete studies purged by age and by disk watermark, oldest last instance first, their files and
index rows removed together (`storage.retention` in the configuration; nothing is purged by default).

Never purged: a study still receiving; one with a job queued, pairing, waiting for its baseline or running; one
with a result not sent (delivery pending or dead); the chosen or awaited baseline of such a job. A purge removes
the study's received files and outputs and every index row that belongs to it (series, instances, jobs, their
results, outputs, deliveries, pairings: found through the database's foreign keys, so the tables of every
pipeline's result records go too); the patient row and the patient's imported data stay, and so do the events
and the audit trail.

One purge, and what a crash at each step leaves:
1. the study's files are listed in `purging/<id>/manifest.json`, written durably (temporary file, fsync,
   rename): a crash leaves a manifest naming files still in place;
2. each file is moved into `purging/<id>/` (a rename on the store's file system): a crash leaves index rows
   whose files are in that folder;
3. one transaction, while no instance is being indexed, checks the study again (complete at the same revision,
   nothing pending, the same files) and deletes its rows with the audit record of the purge: all or nothing;
4. the folder is deleted.
`recover_interrupted` (at start-up, before the object store is reconciled, and before every retention pass)
finishes what a crash left, once its folder is a minute old (another node sharing the storage root may be purging
it): a file of a purging folder whose original path an index row still names goes back there (steps 1-2, or 3
rolled back); the others are deleted (step 3 committed). A study that changed meanwhile (new instances, a re-run)
is put back the same way at once, and purged at a later pass if it is still due.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, MetaData, Select, Table, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from storage.audit import AuditEntry, record_audit
from storage.database import Database
from storage.files import FileLayout, fsync_directory
from storage.overview import ACTIVE_JOB_STATES
from storage.schema import (
    AuditDirection,
    AuditKind,
    AuditOutcome,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    Output,
    Pairing,
    Series,
    Study,
    StudyState,
    utcnow,
)
from storage.settings import RetentionSettings

logger = logging.getLogger(__name__)

MB = 1024 * 1024
BATCH = 20  # candidates read at a time (each purge is its own transaction)
GRACE_S = 60.0  # a purge takes seconds: a purging folder older than this was left by a crash

# Runs the row deletion while no instance is being indexed and forgets the series (`InstanceStore.deleting_series`).
SeriesGuard = Callable[[Collection[str], Callable[[], Any]], Any]


@dataclass(frozen=True)
class Candidate:
    """A study retention may purge: complete, nothing pending."""

    study_id: int
    study_instance_uid: str
    revision: int
    last_received_at: datetime
    size_bytes: int  # of its received instances (outputs are small beside them)


@dataclass(frozen=True)
class Purge:
    """One study purged: what went, and why."""

    study_instance_uid: str
    instances: int
    outputs: int
    bytes_freed: int
    reason: str


class _Changed(Exception):
    """The study changed between the choice and the deletion: its files go back."""


def _purgeable() -> list[ColumnElement[bool]]:
    job_active = Job.state.in_(ACTIVE_JOB_STATES)
    baselines_in_use = (
        select(Pairing.baseline_study_uid)
        .join(Job, Job.id == Pairing.job_fk)
        .where(job_active, Pairing.baseline_study_uid != "")
    )
    return [
        Study.state == StudyState.COMPLETE,
        ~exists().where(Job.study_fk == Study.id, job_active),
        ~exists().where(
            Job.study_fk == Study.id,
            Output.job_fk == Job.id,
            Delivery.output_fk == Output.id,
            Delivery.state != DeliveryState.SENT,
        ),
        Study.study_instance_uid.not_in(baselines_in_use),
    ]


def candidates(
    session: Session, received_before: datetime | None = None, limit: int = BATCH, skip: Collection[int] = ()
) -> list[Candidate]:
    """Purgeable studies, oldest last instance first (only those last received before `received_before`)."""
    statement = select(Study.id, Study.study_instance_uid, Study.revision, Study.last_received_at).where(*_purgeable())
    if received_before is not None:
        statement = statement.where(Study.last_received_at < received_before)
    if skip:
        statement = statement.where(Study.id.not_in(list(skip)))
    rows = session.execute(statement.order_by(Study.last_received_at, Study.id).limit(limit)).all()
    sizes = dict(  # of these studies only (a sum per study in the first query would run over every study)
        session.execute(
            select(Series.study_fk, func.sum(Instance.size_bytes))
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.study_fk.in_([row[0] for row in rows]))
            .group_by(Series.study_fk)
        ).all()
    )
    return [Candidate(row[0], row[1], row[2], row[3], int(sizes.get(row[0]) or 0)) for row in rows]


def free_bytes(layout: FileLayout) -> int:
    return shutil.disk_usage(layout.root).free


# --- the policy ---------------------------------------------------------------------------------------------------


def plan(
    settings: RetentionSettings, database: Database, layout: FileLayout, now: datetime
) -> list[tuple[Candidate, str]]:
    """What `apply` would purge now, with the reason (`immunode purge --dry-run`); freed space estimated from the
    instances' sizes."""
    chosen: list[tuple[Candidate, str]] = []
    with database.session() as session:
        if settings.max_age_days is not None:
            cutoff = now - timedelta(days=settings.max_age_days)
            for candidate in _all(session, cutoff):
                chosen.append((candidate, _age_reason(settings)))
        if settings.purge_below_free_mb is not None:
            free = free_bytes(layout) + sum(c.size_bytes for c, _ in chosen)
            if free < settings.purge_below_free_mb * MB:
                taken = {c.study_id for c, _ in chosen}
                for candidate in _all(session, None, taken):
                    if free >= settings.purge_until_free_mb * MB:
                        break
                    chosen.append((candidate, _watermark_reason(settings)))
                    free += candidate.size_bytes
    return chosen


def _all(session: Session, received_before: datetime | None, skip: Collection[int] = ()) -> Iterator[Candidate]:
    skipped = set(skip)
    while batch := candidates(session, received_before, BATCH, skipped):
        yield from batch
        skipped |= {c.study_id for c in batch}


def _age_reason(settings: RetentionSettings) -> str:
    return f"retention: last instance received more than {settings.max_age_days:g} day(s) ago"


def _watermark_reason(settings: RetentionSettings) -> str:
    return (
        f"retention: free disk below {settings.purge_below_free_mb} MB, "
        f"purging oldest first until {settings.purge_until_free_mb} MB are free"
    )


def apply(
    settings: RetentionSettings,
    database: Database,
    layout: FileLayout,
    guard: SeriesGuard | None = None,
    now: datetime | None = None,
) -> list[Purge]:
    """Purge what the policy says is due now: studies past the age limit, then (below the low watermark) the
    oldest studies until the high watermark is free again."""
    now = now or utcnow()
    purged: list[Purge] = []
    if settings.max_age_days is not None:
        cutoff = now - timedelta(days=settings.max_age_days)
        purged += _purge_while(database, layout, guard, cutoff, _age_reason(settings), lambda: True)
    below = settings.purge_below_free_mb
    if below is not None and free_bytes(layout) < below * MB:
        target = settings.purge_until_free_mb * MB
        done = _purge_while(
            database, layout, guard, None, _watermark_reason(settings), lambda: free_bytes(layout) < target
        )
        purged += done
        if free_bytes(layout) < target:
            logger.warning(
                "retention: %d MB free after purging %d stud(ies); below the %d MB wanted, and no other study may "
                "be purged (receiving, analysing, or with results not yet sent)",
                free_bytes(layout) // MB,
                len(done),
                settings.purge_until_free_mb,
            )
    return purged


def _purge_while(
    database: Database,
    layout: FileLayout,
    guard: SeriesGuard | None,
    received_before: datetime | None,
    reason: str,
    wanted: Callable[[], bool],
) -> list[Purge]:
    purged: list[Purge] = []
    skipped: set[int] = set()
    while wanted():
        with database.session() as session:
            batch = candidates(session, received_before, BATCH, skipped)
        if not batch:
            break
        for candidate in batch:
            if not wanted():
                return purged
            skipped.add(candidate.study_id)
            done = purge_study(database, layout, candidate, reason, guard)
            if done is not None:
                purged.append(done)
    return purged


# --- one purge ------------------------------------------------------------------------------------------------------


def _study_files(session: Session, study_id: int) -> tuple[list[str], list[str], set[str]]:
    """(instance paths, output paths, series UIDs) of a study, relative to the storage root."""
    rows = session.execute(
        select(Instance.path, Series.series_instance_uid)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == study_id)
    ).all()
    outputs = session.scalars(select(Output.path).join(Job, Job.id == Output.job_fk).where(Job.study_fk == study_id))
    series = set(session.scalars(select(Series.series_instance_uid).where(Series.study_fk == study_id)))
    return [path for path, _ in rows], list(outputs), series


def purge_study(
    database: Database, layout: FileLayout, candidate: Candidate, reason: str, guard: SeriesGuard | None = None
) -> Purge | None:
    """Purge one study (see the module's steps); None when it changed meanwhile and was put back."""
    with database.session() as session:
        instances, outputs, series = _study_files(session, candidate.study_id)
    files = instances + outputs
    folder = layout.purging / uuid.uuid4().hex
    folder.mkdir(parents=True)
    _write_manifest(folder, candidate.study_instance_uid, files)
    moved = _move_out(layout, folder, files)
    entry = AuditEntry(
        direction=AuditDirection.LOCAL,
        kind=AuditKind.PURGE,
        outcome=AuditOutcome.COMPLETED,
        instances=len(instances),
        study_uids=(candidate.study_instance_uid,),
        detail=f"{reason}; {len(outputs)} result object(s), {moved / MB:.1f} MB freed",
    )

    def delete_rows() -> None:
        with database.session() as session:
            _check_unchanged(session, candidate, set(files))
            _delete_study_rows(session, candidate.study_id)
            record_audit(session, entry)

    try:
        if guard is None:
            delete_rows()
        else:
            guard(series, delete_rows)
    except BaseException as error:
        restored, dropped = _settle(database, layout, folder)
        if isinstance(error, _Changed):
            logger.info(
                "retention: study %s changed while it was purged (%s): %d file(s) put back, %d no longer indexed",
                candidate.study_instance_uid,
                error,
                restored,
                dropped,
            )
            return None
        raise
    shutil.rmtree(folder)
    for output in outputs:
        with contextlib.suppress(OSError):  # the job's folder is left when it holds anything else
            layout.absolute(output).parent.rmdir()
    logger.info(entry.line())
    return Purge(candidate.study_instance_uid, len(instances), len(outputs), moved, reason)


def _write_manifest(folder: Path, study_instance_uid: str, files: list[str]) -> None:
    temporary = folder / "manifest.json.part"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"study_instance_uid": study_instance_uid, "files": files}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / "manifest.json")
    fsync_directory(folder)
    fsync_directory(folder.parent)


def _move_out(layout: FileLayout, folder: Path, files: list[str]) -> int:
    """Move the files into the purging folder (file i as `i.dcm`); returns their total size."""
    size = 0
    parents = set()
    for number, relative in enumerate(files):
        source = layout.absolute(relative)
        try:
            size += source.stat().st_size
            os.replace(source, folder / f"{number}.dcm")
        except FileNotFoundError:
            logger.warning("retention: %s is indexed but missing; its row is purged all the same", relative)
            continue
        parents.add(source.parent)
    for parent in parents | {folder}:
        fsync_directory(parent)
    return size


def _check_unchanged(session: Session, candidate: Candidate, files: set[str]) -> None:
    study = session.scalar(select(Study).where(Study.id == candidate.study_id, *_purgeable()).with_for_update())
    if study is None:
        raise _Changed("no longer purgeable: new instances, or work queued for it")
    if study.revision != candidate.revision:
        raise _Changed(f"revision {study.revision}, not {candidate.revision}")
    instances, outputs, _ = _study_files(session, candidate.study_id)
    if set(instances + outputs) != files:
        raise _Changed("its files changed")


def _owned_rows(session: Session, study_id: int) -> list[tuple[Table, Select]]:
    """Every table holding rows of the study, parents first, each with the select of its rows' keys: the study,
    and through the database's foreign keys whatever hangs off it (not the patient, which is not below it). The
    foreign keys are read from the database itself, so that the tables of every pipeline's result records go too,
    whichever migrations made them."""
    schema = MetaData()
    schema.reflect(session.connection())
    studies = schema.tables[Study.__tablename__]
    owned: dict[Table, Select] = {studies: select(studies.c.id).where(studies.c.id == study_id)}
    for table in schema.sorted_tables:
        if table in owned:
            continue
        references = [fk for fk in table.foreign_keys if fk.column.table in owned and fk.column.table is not table]
        if references:
            (key,) = table.primary_key.columns
            owned[table] = select(key).where(or_(*(fk.parent.in_(owned[fk.column.table]) for fk in references)))
    return list(owned.items())


def _delete_study_rows(session: Session, study_id: int) -> None:
    for table, rows in reversed(_owned_rows(session, study_id)):  # children before their parents
        (key,) = table.primary_key.columns
        session.execute(delete(table).where(key.in_(rows)))


# --- after a crash ------------------------------------------------------------------------------------------------


def recover_interrupted(database: Database, layout: FileLayout, grace_s: float = GRACE_S) -> tuple[int, int]:
    """Finish the purges a crash interrupted; returns (files put back, files deleted). A folder younger than
    `grace_s` is left alone: another node sharing the storage root may be purging it now."""
    restored = deleted = 0
    cutoff = time.time() - grace_s
    for folder in sorted(p for p in layout.purging.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff):
        back, gone = _settle(database, layout, folder)
        restored += back
        deleted += gone
    if restored or deleted:
        logger.warning(
            "retention: interrupted purge(s) finished: %d file(s) put back (their rows remained), %d deleted",
            restored,
            deleted,
        )
    return restored, deleted


def _settle(database: Database, layout: FileLayout, folder: Path) -> tuple[int, int]:
    """Put the files of a purging folder back where an index row still names them, delete the others and the
    folder."""
    restored = deleted = 0
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = {"files": []}  # interrupted before its manifest existed: nothing was moved yet
    files: list[str] = manifest["files"]
    named: set[str] = set()
    with database.session() as session:
        for start in range(0, len(files), 500):  # SQLite limits the parameters of one statement
            chunk = files[start : start + 500]
            named |= set(session.scalars(select(Instance.path).where(Instance.path.in_(chunk))))
            named |= set(session.scalars(select(Output.path).where(Output.path.in_(chunk))))
    for number, relative in enumerate(files):
        moved = folder / f"{number}.dcm"
        if not moved.exists():
            continue
        if relative in named:
            target = layout.absolute(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(moved, target)
            fsync_directory(target.parent)
            restored += 1
        else:
            moved.unlink()
            deleted += 1
    shutil.rmtree(folder)
    return restored, deleted
