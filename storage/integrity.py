"""What the node refused to merge or could not index: identity conflicts and quarantined files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.schema import ConflictKind, IdentityConflict, QuarantinedFile


@dataclass(frozen=True)
class ConflictView:
    at: datetime
    kind: ConflictKind
    study_instance_uid: str
    sop_instance_uid: str
    received: str  # PatientID / issuer (or study) the instance named
    indexed: str  # what the index holds


@dataclass(frozen=True)
class QuarantineView:
    at: datetime
    path: str
    reason: str
    sop_instance_uid: str


def record_quarantine(
    session: Session, path: str, original_path: str, reason: str, sop_instance_uid: str = "", study_uid: str = ""
) -> None:
    session.add(
        QuarantinedFile(
            path=path,
            original_path=original_path,
            reason=reason[:2000],
            sop_instance_uid=sop_instance_uid[:64],
            study_instance_uid=study_uid[:64],
        )
    )


def conflicts(session: Session, limit: int) -> tuple[int, list[ConflictView]]:
    total = session.scalar(select(func.count(IdentityConflict.id))) or 0
    rows = session.scalars(select(IdentityConflict).order_by(IdentityConflict.id.desc()).limit(limit)).all()
    views = []
    for row in rows:
        if row.kind is ConflictKind.PATIENT:
            received = f"PatientID {row.received_patient_id!r} issuer {row.received_issuer!r}"
            indexed = f"PatientID {row.indexed_patient_id!r} issuer {row.indexed_issuer!r}"
        else:
            received, indexed = f"study {row.study_instance_uid}", f"study {row.indexed_study_uid}"
        views.append(ConflictView(row.at, row.kind, row.study_instance_uid, row.sop_instance_uid, received, indexed))
    return total, views


def quarantined(session: Session, limit: int) -> tuple[int, list[QuarantineView]]:
    total = session.scalar(select(func.count(QuarantinedFile.id))) or 0
    rows = session.scalars(select(QuarantinedFile).order_by(QuarantinedFile.id.desc()).limit(limit)).all()
    return total, [QuarantineView(r.at, r.path, r.reason, r.sop_instance_uid) for r in rows]
