"""Identity policy of the store: the first instance indexed for a Study Instance UID fixes the study's patient
(PatientID and IssuerOfPatientID, compared exactly, empty included), and the first for a Series Instance UID
fixes the series' study. An instance that contradicts either is refused (`IdentityMismatch`, a failure status)
and the conflict is recorded (`identity_conflicts`, shown by `immunode status`); nothing of it is stored. A
resent SOP Instance UID must name the same study and series as the indexed one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from storage.database import Database
from storage.errors import IdentityMismatch, StorageError
from storage.schema import ConflictKind, IdentityConflict
from storage.types import InstanceHeader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesKey:
    """Committed index rows of one series and the identity they were filed under."""

    study_id: int
    series_id: int
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str


@dataclass(frozen=True)
class Conflict:
    """What an instance claims against what the index holds."""

    kind: ConflictKind
    indexed_study_uid: str
    indexed_patient_id: str
    indexed_issuer: str

    def describe(self, header: InstanceHeader) -> str:
        if self.kind is ConflictKind.PATIENT:
            return (
                f"instance {header.sop_instance_uid} names another patient (PatientID/IssuerOfPatientID) than "
                f"study {header.study_instance_uid} already holds: refused, not merged"
            )
        return (
            f"instance {header.sop_instance_uid} names study {header.study_instance_uid} but its series "
            f"{header.series_instance_uid} (or the instance itself) is indexed under study "
            f"{self.indexed_study_uid}: refused, not merged"
        )


def check_identity(key: SeriesKey, header: InstanceHeader) -> None:
    if key.study_instance_uid != header.study_instance_uid:
        kind = ConflictKind.STUDY
    elif (key.patient_id, key.issuer_of_patient_id) != (header.patient_id, header.issuer_of_patient_id):
        kind = ConflictKind.PATIENT
    else:
        return
    conflict = Conflict(kind, key.study_instance_uid, key.patient_id, key.issuer_of_patient_id)
    raise IdentityMismatch(conflict.describe(header), header.study_instance_uid, conflict)


def record_conflict(database: Database, header: InstanceHeader, error: IdentityMismatch, calling_ae_title: str) -> None:
    """Record a refused instance's conflict (`identity_conflicts`); an index that cannot record it is logged."""
    conflict = error.conflict
    logger.warning("%s (from %r)", error, calling_ae_title[:16])
    try:
        with database.session() as session:
            session.add(
                IdentityConflict(
                    kind=conflict.kind,
                    study_instance_uid=header.study_instance_uid,
                    series_instance_uid=header.series_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    received_patient_id=header.patient_id,
                    received_issuer=header.issuer_of_patient_id,
                    indexed_patient_id=conflict.indexed_patient_id,
                    indexed_issuer=conflict.indexed_issuer,
                    indexed_study_uid=conflict.indexed_study_uid,
                    calling_ae_title=calling_ae_title[:16],
                )
            )
    except StorageError as record_error:
        # The refusal still goes out; the SCP's refusal record (spooled when the index is down) names it.
        logger.error("identity conflict of %s not recorded: %s", header.sop_instance_uid, record_error)
