"""Store stage: durably write a received instance and index it; success only once both are done.

Duplicate SOP Instance UID policy (one index row per UID, always):
- same bytes as the stored copy: acknowledged, nothing rewritten (`DUPLICATE_IDENTICAL`);
- different bytes: the newer copy replaces the stored file (a modality's or PACS's correction), the
  index row is updated and the study re-opens so that its analysis re-runs (`REPLACED`).
"""

from __future__ import annotations

import hashlib
import logging
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipelines.types import InstanceHeader, StoredInstance, StoreOutcome
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Event, Instance, Patient, Series, Study, StudyState, utcnow

logger = logging.getLogger(__name__)


def record_event(session: Session, level: str, message: str, study_instance_uid: str = "") -> None:
    session.add(Event(level=level, message=message, study_instance_uid=study_instance_uid[:64]))


class InstanceStore:
    def __init__(self, database: Database, layout: FileLayout) -> None:
        self.database = database
        self.layout = layout
        # One writer at a time for the index rows of this process: concurrent associations of one study
        # would otherwise race to insert the same patient, study or series row.
        self._index_lock = threading.Lock()

    def store(self, header: InstanceHeader, data: bytes, calling_ae_title: str) -> StoredInstance:
        """Raises storage.errors.OutOfResources or IndexUnavailable; on error nothing new is left behind."""
        digest = hashlib.sha256(data).hexdigest()
        with self.database.session() as session:
            existing = session.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
            if existing is not None and existing.sha256 == digest:
                existing.times_received += 1
                self._touch_study(session, header)
                return StoredInstance(header, self.layout.absolute(existing.path), digest,
                                      StoreOutcome.DUPLICATE_IDENTICAL)

        self.layout.check_free_space(len(data))
        final_path = self.layout.new_object_path()
        self.layout.write_durably(data, final_path)
        replaced_path = None
        try:
            with self._index_lock, self.database.session() as session:
                replaced_path = self._index(session, header, final_path, len(data), digest, calling_ae_title)
        except BaseException:
            final_path.unlink(missing_ok=True)
            raise
        if replaced_path is not None:
            replaced_path.unlink(missing_ok=True)
            logger.info("instance %s replaced by a different copy", header.sop_instance_uid)
            return StoredInstance(header, final_path, digest, StoreOutcome.REPLACED)
        return StoredInstance(header, final_path, digest, StoreOutcome.NEW)

    def _touch_study(self, session: Session, header: InstanceHeader) -> None:
        study = session.scalar(select(Study).where(Study.study_instance_uid == header.study_instance_uid))
        if study is not None and study.state is StudyState.RECEIVING:
            study.last_received_at = utcnow()

    def _index(self, session: Session, header: InstanceHeader, path, size: int, digest: str,
               calling_ae_title: str):  # noqa: ANN001, ANN202 - Path in, Path | None out
        now = utcnow()
        patient = session.scalar(
            select(Patient).where(
                Patient.patient_id == header.patient_id,
                Patient.issuer_of_patient_id == header.issuer_of_patient_id,
            )
        )
        if patient is None:
            patient = Patient(patient_id=header.patient_id, issuer_of_patient_id=header.issuer_of_patient_id)
            session.add(patient)
            session.flush()
        study = session.scalar(select(Study).where(Study.study_instance_uid == header.study_instance_uid))
        if study is None:
            study = Study(
                study_instance_uid=header.study_instance_uid, patient_fk=patient.id, study_date=header.study_date,
                accession_number=header.accession_number, state=StudyState.RECEIVING, revision=1,
                first_received_at=now, last_received_at=now,
            )
            session.add(study)
            session.flush()
        else:
            if study.patient_fk != patient.id:
                record_event(session, "WARNING", f"instance {header.sop_instance_uid} names another patient than "
                             "its study; indexed under the study's patient", study.study_instance_uid)
            if study.state is StudyState.COMPLETE:
                study.state = StudyState.RECEIVING
                study.revision += 1
                record_event(session, "INFO", f"study re-opened by new instances (revision {study.revision})",
                             study.study_instance_uid)
            study.last_received_at = now
        series = session.scalar(select(Series).where(Series.series_instance_uid == header.series_instance_uid))
        if series is None:
            series = Series(
                series_instance_uid=header.series_instance_uid, study_fk=study.id, modality=header.modality,
                series_number=header.series_number, series_description=header.series_description,
                manufacturer=header.manufacturer, frame_of_reference_uid=header.frame_of_reference_uid,
            )
            session.add(series)
            session.flush()
        relative = self.layout.relative(path)
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
        replaced = None
        if instance is None:
            session.add(Instance(
                sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid, series_fk=series.id,
                instance_number=header.instance_number, transfer_syntax_uid=header.transfer_syntax_uid,
                path=relative, size_bytes=size, sha256=digest, calling_ae_title=calling_ae_title, received_at=now,
            ))
        else:
            replaced = self.layout.absolute(instance.path)
            instance.path, instance.size_bytes, instance.sha256 = relative, size, digest
            instance.times_received += 1
            instance.received_at = now
            instance.series_fk = series.id
            record_event(session, "INFO", f"instance {header.sop_instance_uid} received again with different "
                         "content; the newer copy replaced the stored one", header.study_instance_uid)
        return replaced
