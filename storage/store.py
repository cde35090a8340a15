"""Store stage: durably write a received instance and index it; success only once both are done.

Duplicate SOP Instance UID policy (one index row per UID, always):
- same bytes as the stored copy: acknowledged, nothing rewritten (`DUPLICATE_IDENTICAL`);
- different bytes: the newer copy replaces the stored file (a modality's or PACS's correction), the
  index row is updated and the study re-opens so that its analysis re-runs (`REPLACED`).

Identity policy (`storage.identity`): an instance that contradicts the patient of its study or the study of
its series is refused and the conflict recorded; nothing of it is stored.

The common path (a new instance of a known series) is one transaction of two statements, so that
ingest stays close to the speed of a bare receiver while every acknowledged instance is on disk and
in the index. The series cache only ever holds rows that are committed: it is filled after the commit,
never inside the transaction, so a rolled-back transaction cannot leave ids behind that the database
then hands to another patient's rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.database import Database, Prepared
from storage.errors import IdentityMismatch, IndexUnavailable, OutOfResources, StorageError
from storage.events import record_event
from storage.files import FileLayout
from storage.group_commit import GroupCommit
from storage.identity import Conflict, SeriesKey, check_identity, record_conflict
from storage.schema import (
    ConflictKind,
    Instance,
    Patient,
    Series,
    Study,
    StudyState,
    utcnow,
)
from storage.types import InstanceHeader, StoredInstance, StoreOutcome

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Attributes of an instance's header that its series row keeps.
SERIES_ATTRIBUTES = (
    "series_instance_uid",
    "modality",
    "series_number",
    "series_description",
    "manufacturer",
    "frame_of_reference_uid",
)


# Attributes of an instance's header that its study row keeps (from the study's first instance).
STUDY_ATTRIBUTES = ("study_instance_uid", "study_date", "accession_number", "study_description", "patient_name")


# The columns the hot path's INSERT of an instance row sets.
_INSTANCE_COLUMNS = (
    "sop_instance_uid",
    "sop_class_uid",
    "series_fk",
    "instance_number",
    "transfer_syntax_uid",
    "path",
    "size_bytes",
    "sha256",
    "calling_ae_title",
    "received_at",
    "times_received",
)


def _header_values(header: InstanceHeader, names: tuple[str, ...]) -> dict[str, object]:
    return {name: getattr(header, name) for name in names}


class InstanceStore:
    def __init__(self, database: Database, layout: FileLayout) -> None:
        self.database = database
        self.layout = layout
        # One index writer at a time in this process (concurrent associations of one study would otherwise
        # race to insert the same patient, study or series row), writing for every association at once:
        # instances that arrive together share one transaction and one commit (`storage.group_commit`).
        self._commits: GroupCommit[_Pending, _Indexed] = GroupCommit(self._index_batch)
        # Committed series rows by Series Instance UID, to skip the look-up (retention deletes series rows only
        # through `deleting_series`, which drops them here).
        self._series: dict[str, SeriesKey] = {}
        # The hot-path statements, built once. INSERT .. ON CONFLICT DO NOTHING: a known UID inserts
        # nothing and takes the duplicate path.
        dialect_insert = postgresql_insert if database.engine.dialect.name == "postgresql" else sqlite_insert
        self._insert_instance = (
            dialect_insert(Instance)
            .on_conflict_do_nothing(index_elements=[Instance.sop_instance_uid])
            .returning(Instance.id)
        )
        self._instance_exists = select(Instance.id).where(Instance.sop_instance_uid == bindparam("uid"))
        self._refresh_study = (
            update(Study)
            .where(Study.id == bindparam("study_id"), Study.state == StudyState.RECEIVING)
            .values(last_received_at=bindparam("now"))
        )
        # On SQLite the two run on the driver's cursor (`Prepared`): a third of the index's time per instance.
        dialect = database.engine.dialect
        sqlite = dialect.name == "sqlite"
        self._prepared_insert = Prepared(self._insert_instance, dialect, _INSTANCE_COLUMNS) if sqlite else None
        self._prepared_refresh = Prepared(self._refresh_study, dialect) if sqlite else None

    def store(self, header: InstanceHeader, data: bytes, calling_ae_title: str) -> StoredInstance:
        """Raises storage.errors.OutOfResources, IndexUnavailable or IdentityMismatch; on error nothing new
        is left behind."""
        digest = hashlib.sha256(data).hexdigest()
        self.layout.check_free_space(len(data))
        final_path = self.layout.new_object_path()
        self.layout.write_durably(data, final_path)
        return self._stored(header, final_path, len(data), digest, calling_ae_title)

    def store_received(
        self,
        header: InstanceHeader,
        received: Path,
        calling_ae_title: str,
        digest: str | None = None,
        size: int | None = None,
    ) -> StoredInstance:
        """`store` for a file the network wrote to disk as it arrived (`FileLayout.receiving`): hashed in
        blocks (unless the writer gives its SHA-256 and size) and moved into place, never held in memory. The
        same errors and guarantees as `store`."""
        try:
            if digest is None:
                with open(received, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if size is None:
                size = received.stat().st_size
        except OSError as error:
            raise OutOfResources(f"cannot read the received data set: {error.strerror}") from error
        self.layout.check_free_space(0)  # already on disk: refuse only when the store is below its reserve
        final_path = self.layout.new_object_path()
        self.layout.adopt(received, final_path)  # the folder is fsynced after the index commit (`_index_batch`)
        return self._stored(header, final_path, size, digest, calling_ae_title)

    def _stored(
        self, header: InstanceHeader, final_path: Path, size: int, digest: str, calling_ae_title: str
    ) -> StoredInstance:
        try:
            outcome, kept_path, replaced = self._index(header, final_path, size, digest, calling_ae_title)
        except _Unsettled:
            raise  # indexed, but its name may not be durable: refused, and a resent copy finds it
        except BaseException:
            final_path.unlink(missing_ok=True)
            raise
        if outcome is StoreOutcome.DUPLICATE_IDENTICAL:
            final_path.unlink(missing_ok=True)
        elif replaced is not None:
            replaced.unlink(missing_ok=True)
            logger.info("instance %s replaced by a different copy", header.sop_instance_uid)
        return StoredInstance(header, kept_path, digest, outcome)

    def index_existing(self, header: InstanceHeader, path: Path, size: int, digest: str) -> StoreOutcome:
        """Index a file already durable in the object store (start-up reconciliation of a crash between
        write and commit). Only a new instance is indexed: a SOP Instance UID already indexed keeps its
        acknowledged copy, and the caller disposes of this one (`DUPLICATE_IDENTICAL` or `REPLACED`)."""
        with self._commits.exclusive():
            try:
                with self.database.transaction() as connection:
                    key = self._index_new(connection, _Pending(header, path, size, digest, ""))
                self._series[header.series_instance_uid] = key
                return StoreOutcome.NEW
            except _AlreadyIndexed:
                pass
            with self.database.session() as session:
                indexed = session.scalar(
                    select(Instance.sha256).where(Instance.sop_instance_uid == header.sop_instance_uid)
                )
        return StoreOutcome.DUPLICATE_IDENTICAL if indexed == digest else StoreOutcome.REPLACED

    def _index(self, header: InstanceHeader, path: Path, size: int, digest: str, calling_ae_title: str) -> _Indexed:
        return self._commits.submit(_Pending(header, path, size, digest, calling_ae_title))

    def _index_batch(self, items: Sequence[_Pending]) -> list[_Indexed | BaseException]:
        """Index new instances in one transaction; each that is not simply new (a UID already indexed, an
        identity conflict) then alone, as before. Then the folders the kept files were renamed into are fsynced,
        once for the batch."""
        results: list[_Indexed | BaseException | None] = [None] * len(items)
        keys: dict[int, SeriesKey] = {}
        alone: list[int] = []
        try:
            with self.database.transaction() as connection:
                for number, item in enumerate(items):
                    try:
                        keys[number] = self._insert_new(connection, item)
                    except (_AlreadyIndexed, IdentityMismatch):
                        alone.append(number)  # nothing of it was written (see `_insert_new`)
                self._mark_studies(connection, [(keys[n].study_id, items[n].header) for n in keys])
        except (StorageError, _BatchBroken) as error:
            if isinstance(error, IndexUnavailable) and isinstance(error.__cause__, IntegrityError):
                # A cached series whose rows another node's retention deleted (PostgreSQL never reuses the id):
                # the series are looked up again, each instance alone.
                for item in items:
                    self._series.pop(item.header.series_instance_uid, None)
            elif len(items) == 1 and isinstance(error, StorageError):
                return [error]
            return self._settled(items, [self._caught(self._index_alone, item) for item in items])
        for number, key in keys.items():
            self._series[items[number].header.series_instance_uid] = key  # committed: now it may be cached
            results[number] = (StoreOutcome.NEW, items[number].path, None)
        for number in alone:
            results[number] = self._caught(self._index_alone, items[number])
        return self._settled(items, results)

    def _settled(
        self, items: Sequence[_Pending], results: list[_Indexed | BaseException | None]
    ) -> list[_Indexed | BaseException]:
        """fsync the folders of the files kept; where that fails, their instances are refused (files kept)."""
        kept = [
            number
            for number, result in enumerate(results)
            if isinstance(result, tuple) and result[0] is not StoreOutcome.DUPLICATE_IDENTICAL
        ]
        try:
            self.layout.settle({items[n].path.parent for n in kept})
        except StorageError as error:
            logger.error("indexed instances' folder not made durable: %s", error)
            for number in kept:
                results[number] = _Unsettled(str(error))
        return results  # type: ignore[return-value]

    @staticmethod
    def _caught(function: Callable[[_Pending], _Indexed], item: _Pending) -> _Indexed | BaseException:
        try:
            return function(item)
        except Exception as error:  # noqa: BLE001 - raised in the thread that submitted the item
            return error

    def _index_alone(self, item: _Pending) -> _Indexed:
        """One instance in its own transaction: new, or the duplicate policy, or a recorded identity conflict."""
        header = item.header
        try:
            try:
                with self.database.transaction() as connection:
                    key = self._index_new(connection, item)
                self._series[header.series_instance_uid] = key  # committed: now it may be cached
                return StoreOutcome.NEW, item.path, None
            except _AlreadyIndexed:
                pass
            with self.database.session() as session:
                outcome, kept, replaced, key = self._index_again(session, header, item.path, item.size, item.digest)
            self._series[header.series_instance_uid] = key
            return outcome, kept, replaced
        except IdentityMismatch as error:
            record_conflict(self.database, header, error, item.calling_ae_title)
            raise

    def deleting_series(self, series_uids: Collection[str], delete: Callable[[], T]) -> T:
        """Run `delete` (retention removing these series' rows) while no instance is being indexed, then drop the
        series from the cache: a cached key must never outlive its rows (SQLite gives a deleted row's id to the
        next new row, which would file instances under another patient's series)."""
        with self._commits.exclusive():
            try:
                return delete()
            finally:
                for uid in series_uids:
                    self._series.pop(uid, None)

    def _key(self, session: Session | Connection, header: InstanceHeader) -> SeriesKey:
        """The series' committed rows, creating patient, study and series rows as needed; raises
        IdentityMismatch when the instance contradicts the study's patient or the series' study."""
        cached = self._series.get(header.series_instance_uid)
        if cached is not None:
            check_identity(cached, header)
            return cached
        row = session.execute(
            select(Series.id, Study.id, Study.study_instance_uid, Patient.patient_id, Patient.issuer_of_patient_id)
            .join(Study, Study.id == Series.study_fk)
            .join(Patient, Patient.id == Study.patient_fk)
            .where(Series.series_instance_uid == header.series_instance_uid)
        ).first()
        if row is not None:
            key = SeriesKey(row[1], row[0], row[2], row[3], row[4])
            check_identity(key, header)
            return key
        study = session.execute(
            select(Study.id, Patient.patient_id, Patient.issuer_of_patient_id)
            .join(Patient, Patient.id == Study.patient_fk)
            .where(Study.study_instance_uid == header.study_instance_uid)
        ).first()
        if study is not None:
            study_id = study[0]
            check_identity(SeriesKey(study_id, 0, header.study_instance_uid, study[1], study[2]), header)
        else:
            study_id = self._new_study(session, header)
        series_id = session.scalar(
            insert(Series).returning(Series.id).values(study_fk=study_id, **_header_values(header, SERIES_ATTRIBUTES))
        )
        return SeriesKey(study_id, series_id, header.study_instance_uid, header.patient_id, header.issuer_of_patient_id)

    @staticmethod
    def _new_study(session: Session | Connection, header: InstanceHeader) -> int:
        patient_id = session.scalar(
            select(Patient.id).where(
                Patient.patient_id == header.patient_id, Patient.issuer_of_patient_id == header.issuer_of_patient_id
            )
        )
        if patient_id is None:
            patient_id = session.scalar(
                insert(Patient)
                .returning(Patient.id)
                .values(patient_id=header.patient_id, issuer_of_patient_id=header.issuer_of_patient_id)
            )
        now = utcnow()
        return session.scalar(
            insert(Study)
            .returning(Study.id)
            .values(
                patient_fk=patient_id,
                **_header_values(header, STUDY_ATTRIBUTES),
                state=StudyState.RECEIVING,
                revision=1,
                first_received_at=now,
                last_received_at=now,
            )
        )

    def _mark_received(self, session: Session | Connection, study_id: int, study_uid: str) -> None:
        """Refresh the study's last-received time; a complete study re-opens at the next revision."""
        now = utcnow()
        values = {"study_id": study_id, "now": now}
        if self._prepared_refresh is not None and isinstance(session, Connection):
            refreshed = self._prepared_refresh.execute(session, values).rowcount
        else:
            refreshed = session.execute(self._refresh_study, values).rowcount
        if refreshed == 0:
            session.execute(
                update(Study)
                .where(Study.id == study_id)
                .values(last_received_at=now, state=StudyState.RECEIVING, revision=Study.revision + 1)
            )
            revision = session.scalar(select(Study.revision).where(Study.id == study_id))
            record_event(session, "INFO", f"study re-opened by new instances (revision {revision})", study_uid)

    def _index_new(self, session: Connection, item: _Pending) -> SeriesKey:
        key = self._insert_new(session, item)
        self._mark_received(session, key.study_id, item.header.study_instance_uid)
        return key

    def _insert_new(self, session: Connection, item: _Pending) -> SeriesKey:
        """Insert the instance's row (and its patient, study and series rows where they are new). Raises
        _AlreadyIndexed or IdentityMismatch before anything is written, so that one instance of a batch can
        be set aside without rolling the others back."""
        header = item.header
        cached = header.series_instance_uid in self._series
        if not cached and session.execute(self._instance_exists, {"uid": header.sop_instance_uid}).first():
            raise _AlreadyIndexed()
        key = self._key(session, header)
        values = {
            "sop_instance_uid": header.sop_instance_uid,
            "sop_class_uid": header.sop_class_uid,
            "series_fk": key.series_id,
            "instance_number": header.instance_number,
            "transfer_syntax_uid": header.transfer_syntax_uid,
            "path": self.layout.relative(item.path),
            "size_bytes": item.size,
            "sha256": item.digest,
            "calling_ae_title": item.calling_ae_title[:16],
            "received_at": utcnow(),
            "times_received": 1,
        }
        if self._prepared_insert is not None:
            row = self._prepared_insert.execute(session, values).first
        else:
            row = session.execute(self._insert_instance, values).first()
        # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement.
        if row is None:
            if not cached:
                raise _BatchBroken()  # another process indexed it since the look-up, after our rows were written
            raise _AlreadyIndexed()
        return key

    def _mark_studies(self, session: Connection, received: list[tuple[int, InstanceHeader]]) -> None:
        """`_mark_received` once for each study of a batch."""
        studies = {study_id: header.study_instance_uid for study_id, header in received}
        for study_id, study_uid in studies.items():
            self._mark_received(session, study_id, study_uid)

    def _index_again(
        self, session: Session, header: InstanceHeader, path: Path, size: int, digest: str
    ) -> tuple[StoreOutcome, Path, Path | None, SeriesKey]:
        """A SOP Instance UID already indexed: apply the duplicate policy (same study and series only)."""
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
        key = self._key(session, header)
        if instance.series_fk != key.series_id:
            indexed = instance.series.study
            conflict = Conflict(
                ConflictKind.STUDY,
                indexed.study_instance_uid,
                indexed.patient.patient_id,
                indexed.patient.issuer_of_patient_id,
            )
            raise IdentityMismatch(
                f"instance {header.sop_instance_uid} is indexed under series {instance.series.series_instance_uid}, "
                f"not {header.series_instance_uid}: refused, not moved",
                header.study_instance_uid,
                conflict,
            )
        instance.times_received += 1
        if instance.sha256 == digest and _intact(self.layout.absolute(instance.path), instance.size_bytes):
            with session.no_autoflush:
                study = session.get(Study, key.study_id)
            if study.state is StudyState.RECEIVING:
                study.last_received_at = utcnow()
            return StoreOutcome.DUPLICATE_IDENTICAL, self.layout.absolute(instance.path), None, key
        replaced = self.layout.absolute(instance.path)
        instance.path, instance.size_bytes, instance.sha256 = self.layout.relative(path), size, digest
        instance.received_at = utcnow()
        record_event(
            session,
            "INFO",
            f"instance {header.sop_instance_uid} received again with different content; "
            "the newer copy replaced the stored one",
            header.study_instance_uid,
        )
        self._mark_received(session, key.study_id, header.study_instance_uid)
        return StoreOutcome.REPLACED, path, replaced, key


def _intact(path: Path, size: int) -> bool:
    """The indexed copy is there, whole. A crash after an index commit and before its folder's fsync (on a file
    system that does not journal the rename with that commit) can leave a row without its file; the instance
    was never acknowledged, and the resent copy takes its place."""
    try:
        return path.stat().st_size == size
    except OSError:
        return False


class _AlreadyIndexed(Exception):
    """The SOP Instance UID is already indexed (the duplicate path follows)."""


class _BatchBroken(Exception):
    """A batch wrote rows for an instance it cannot index: the batch is rolled back and each instance retried."""


class _Unsettled(OutOfResources):
    """Indexed, but the folder its file was renamed into could not be fsynced: refused (a resent copy finds
    the indexed one), the file kept."""


@dataclass(frozen=True)
class _Pending:
    """An instance whose file is durable, waiting for its index row."""

    header: InstanceHeader
    path: Path
    size: int
    digest: str
    calling_ae_title: str


_Indexed = tuple[StoreOutcome, Path, "Path | None"]  # outcome, the file kept, a replaced file to delete
