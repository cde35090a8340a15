"""Store stage: durably write a received instance and index it; success only once both are done.

Duplicate SOP Instance UID policy (one index row per UID, always):
- same bytes as the stored copy: acknowledged, nothing rewritten (`DUPLICATE_IDENTICAL`);
- different bytes: the newer copy replaces the stored file (a modality's or PACS's correction), the
  index row is updated and the study re-opens so that its analysis re-runs (`REPLACED`).

The common path (a new instance of a known series) is one transaction of two statements, so that
ingest stays close to the speed of a bare receiver while every acknowledged instance is on disk and
in the index.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from pipelines.types import InstanceHeader, StoredInstance, StoreOutcome
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Event, Instance, Patient, Series, Study, StudyState, utcnow

logger = logging.getLogger(__name__)


def record_event(executor: Session | Connection, level: str, message: str, study_instance_uid: str = "") -> None:
    """An event for `immunode status`; works inside an ORM session and on the ingest path's Core connection."""
    executor.execute(
        insert(Event).values(at=utcnow(), level=level, message=message, study_instance_uid=study_instance_uid[:64])
    )


class InstanceStore:
    def __init__(self, database: Database, layout: FileLayout) -> None:
        self.database = database
        self.layout = layout
        # One index writer at a time in this process: concurrent associations of one study would
        # otherwise race to insert the same patient, study or series row.
        self._index_lock = threading.Lock()
        # Row ids of series already indexed (series rows are never deleted), to skip their look-up.
        self._series_ids: dict[str, tuple[int, int]] = {}
        # The hot-path statements, built once. INSERT .. ON CONFLICT DO NOTHING: a known UID inserts
        # nothing and takes the duplicate path.
        dialect_insert = postgresql_insert if database.engine.dialect.name == "postgresql" else sqlite_insert
        self._insert_instance = (
            dialect_insert(Instance)
            .on_conflict_do_nothing(index_elements=[Instance.sop_instance_uid])
            .returning(Instance.id)
        )
        self._refresh_study = (
            update(Study)
            .where(Study.id == bindparam("study_id"), Study.state == StudyState.RECEIVING)
            .values(last_received_at=bindparam("now"))
        )

    def store(self, header: InstanceHeader, data: bytes, calling_ae_title: str) -> StoredInstance:
        """Raises storage.errors.OutOfResources or IndexUnavailable; on error nothing new is left behind."""
        digest = hashlib.sha256(data).hexdigest()
        self.layout.check_free_space(len(data))
        final_path = self.layout.new_object_path()
        self.layout.write_durably(data, final_path)
        try:
            with self._index_lock:
                try:
                    with self.database.transaction() as connection:
                        self._index_new(connection, header, final_path, len(data), digest, calling_ae_title)
                    return StoredInstance(header, final_path, digest, StoreOutcome.NEW)
                except IntegrityErrorOnInstance:
                    pass
                with self.database.session() as session:
                    outcome, kept_path, replaced = self._index_again(session, header, final_path, len(data), digest)
        except BaseException:
            final_path.unlink(missing_ok=True)
            raise
        if outcome is StoreOutcome.DUPLICATE_IDENTICAL:
            final_path.unlink(missing_ok=True)
        elif replaced is not None:
            replaced.unlink(missing_ok=True)
            logger.info("instance %s replaced by a different copy", header.sop_instance_uid)
        return StoredInstance(header, kept_path, digest, outcome)

    def _ids(self, session: Session | Connection, header: InstanceHeader) -> tuple[int, int]:
        """(study id, series id), creating patient, study and series rows as needed."""
        cached = self._series_ids.get(header.series_instance_uid)
        if cached is not None:
            return cached
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
        study = session.execute(
            select(Study.id, Study.patient_fk).where(Study.study_instance_uid == header.study_instance_uid)
        ).first()
        if study is None:
            now = utcnow()
            study_id = session.scalar(
                insert(Study)
                .returning(Study.id)
                .values(
                    study_instance_uid=header.study_instance_uid,
                    patient_fk=patient_id,
                    study_date=header.study_date,
                    accession_number=header.accession_number,
                    state=StudyState.RECEIVING,
                    revision=1,
                    first_received_at=now,
                    last_received_at=now,
                )
            )
        else:
            study_id = study.id
            if study.patient_fk != patient_id:
                record_event(
                    session,
                    "WARNING",
                    f"instance {header.sop_instance_uid} names another patient than "
                    "its study; indexed under the study's patient",
                    header.study_instance_uid,
                )
        series_id = session.scalar(select(Series.id).where(Series.series_instance_uid == header.series_instance_uid))
        if series_id is None:
            series_id = session.scalar(
                insert(Series)
                .returning(Series.id)
                .values(
                    series_instance_uid=header.series_instance_uid,
                    study_fk=study_id,
                    modality=header.modality,
                    series_number=header.series_number,
                    series_description=header.series_description,
                    manufacturer=header.manufacturer,
                    frame_of_reference_uid=header.frame_of_reference_uid,
                )
            )
        return study_id, series_id

    def _mark_received(self, session: Session | Connection, study_id: int, study_uid: str) -> None:
        """Refresh the study's last-received time; a complete study re-opens at the next revision."""
        now = utcnow()
        refreshed = session.execute(self._refresh_study, {"study_id": study_id, "now": now})
        if refreshed.rowcount == 0:
            session.execute(
                update(Study)
                .where(Study.id == study_id)
                .values(last_received_at=now, state=StudyState.RECEIVING, revision=Study.revision + 1)
            )
            revision = session.scalar(select(Study.revision).where(Study.id == study_id))
            record_event(session, "INFO", f"study re-opened by new instances (revision {revision})", study_uid)

    def _index_new(
        self, session: Connection, header: InstanceHeader, path: Path, size: int, digest: str, calling_ae_title: str
    ) -> None:
        study_id, series_id = self._ids(session, header)
        inserted = session.execute(
            self._insert_instance,
            {
                "sop_instance_uid": header.sop_instance_uid,
                "sop_class_uid": header.sop_class_uid,
                "series_fk": series_id,
                "instance_number": header.instance_number,
                "transfer_syntax_uid": header.transfer_syntax_uid,
                "path": self.layout.relative(path),
                "size_bytes": size,
                "sha256": digest,
                "calling_ae_title": calling_ae_title[:16],
                "received_at": utcnow(),
                "times_received": 1,
            },
        )
        # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement.
        if inserted.first() is None:
            raise IntegrityErrorOnInstance()
        self._mark_received(session, study_id, header.study_instance_uid)
        self._series_ids[header.series_instance_uid] = (study_id, series_id)

    def _index_again(
        self, session: Session, header: InstanceHeader, path: Path, size: int, digest: str
    ) -> tuple[StoreOutcome, Path, Path | None]:
        """A SOP Instance UID already indexed: apply the duplicate policy."""
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
        instance.times_received += 1
        study_id, series_id = self._ids(session, header)
        if instance.sha256 == digest:
            with session.no_autoflush:
                study = session.get(Study, study_id)
            if study.state is StudyState.RECEIVING:
                study.last_received_at = utcnow()
            return StoreOutcome.DUPLICATE_IDENTICAL, self.layout.absolute(instance.path), None
        replaced = self.layout.absolute(instance.path)
        instance.path, instance.size_bytes, instance.sha256 = self.layout.relative(path), size, digest
        instance.received_at = utcnow()
        instance.series_fk = series_id
        record_event(
            session,
            "INFO",
            f"instance {header.sop_instance_uid} received again with different content; "
            "the newer copy replaced the stored one",
            header.study_instance_uid,
        )
        self._mark_received(session, study_id, header.study_instance_uid)
        return StoreOutcome.REPLACED, path, replaced


class IntegrityErrorOnInstance(Exception):
    """The SOP Instance UID is already indexed (the duplicate path follows)."""
