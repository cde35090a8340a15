"""Query/retrieve SCU: find a patient's earlier studies at the PACS (C-FIND, study root, study level) and ask
the PACS to send one to this node (C-MOVE with our AE title as the destination).

The PACS must know this node's AE title, host and port as a move destination, and this node must accept
the PACS as a storage peer (`peers.allowed`); the config check enforces the latter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove

from common.types import StudyFacts, parse_dicom_date
from dicom_node.errors import RetrieveError
from dicom_node.settings import QueryRetrieveSettings
from dicom_node.tls import tls_arguments
from storage.audit import AuditEntry
from storage.schema import AuditDirection, AuditKind, AuditOutcome, utcnow

logger = logging.getLogger(__name__)

PENDING = {0xFF00, 0xFF01}
MOVE_PENDING = {0xFF00}


Audit = Callable[[AuditEntry], None]


def _audit(
    audit: Audit | None,
    kind: AuditKind,
    peer: QueryRetrieveSettings,
    calling_ae_title: str,
    outcome: AuditOutcome,
    detail: str,
    studies: tuple[str, ...] = (),
    instances: int = 0,
) -> None:
    if audit is not None:
        audit(
            AuditEntry(
                direction=AuditDirection.OUTBOUND,
                kind=kind,
                outcome=outcome,
                calling_ae_title=calling_ae_title,
                called_ae_title=peer.ae_title,
                peer_host=peer.host,
                peer_port=peer.port,
                tls=peer.tls is not None,
                detail=detail[:500],
                instances=instances,
                study_uids=studies,
                at=utcnow(),
            )
        )


def _associate(
    peer: QueryRetrieveSettings, calling_ae_title: str, context: str, audit: Audit | None, kind: AuditKind
) -> Association:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.add_requested_context(context)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_arguments(peer.tls, peer.host))
    except OSError as error:
        _audit(audit, kind, peer, calling_ae_title, AuditOutcome.FAILED, f"cannot connect: {error}")
        raise RetrieveError(f"cannot connect to {peer.ae_title} at {peer.host}:{peer.port}: {error}") from None
    if not assoc.is_established:
        outcome = AuditOutcome.REJECTED if assoc.is_rejected else AuditOutcome.FAILED
        _audit(audit, kind, peer, calling_ae_title, outcome, "association not accepted")
        raise RetrieveError(f"{peer.ae_title} at {peer.host}:{peer.port} did not accept the association")
    return assoc


@contextmanager
def _exchange(assoc: Association, ended: Callable[[str], None]) -> Iterator[None]:
    """Release the association however the exchange ends, then report how it ended ("" or the failure)."""
    failure = ""
    try:
        yield
    except RetrieveError as error:
        failure = str(error)
        raise
    finally:
        if assoc.is_established:
            assoc.release()
        ended(failure)


def find_studies(
    peer: QueryRetrieveSettings,
    calling_ae_title: str,
    patient_id: str,
    issuer: str,
    earliest: date,
    latest: date,
    audit: Audit | None = None,
) -> list[StudyFacts]:
    """The peer's studies of the PatientID in the date range. Where the peer returns no IssuerOfPatientID the
    candidate carries the follow-up's issuer provisionally: the stored copy is checked again on arrival."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.IssuerOfPatientID = ""
    query.StudyInstanceUID = ""
    query.StudyDate = f"{earliest:%Y%m%d}-{latest:%Y%m%d}"
    query.ModalitiesInStudy = ""
    assoc = _associate(peer, calling_ae_title, StudyRootQueryRetrieveInformationModelFind, audit, AuditKind.QUERY)
    found = []

    def audited(failure: str) -> None:
        outcome = AuditOutcome.FAILED if failure else AuditOutcome.COMPLETED
        _audit(audit, AuditKind.QUERY, peer, calling_ae_title, outcome, failure or f"C-FIND: {len(found)} study(ies)")

    with _exchange(assoc, audited):
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise RetrieveError(f"C-FIND at {peer.ae_title}: no response (timeout or abort)")
            if code in PENDING and identifier is not None:
                modalities = identifier.get("ModalitiesInStudy", "") or ""
                modalities = [modalities] if isinstance(modalities, str) else list(modalities)
                found.append(
                    StudyFacts(
                        str(identifier.get("StudyInstanceUID", "")),
                        str(identifier.get("PatientID", "")),
                        str(identifier.get("IssuerOfPatientID", "") or issuer),
                        parse_dicom_date(str(identifier.get("StudyDate", ""))),
                        frozenset(m for m in modalities if m),  # empty: the peer did not say
                    )
                )
            elif code not in PENDING and code != 0x0000:
                raise RetrieveError(f"C-FIND at {peer.ae_title} failed with status 0x{code:04X}")
    logger.info("C-FIND at %s: %d study(ies) in %s..%s", peer.ae_title, len(found), earliest, latest)
    return [f for f in found if f.study_instance_uid]


def move_study(peer: QueryRetrieveSettings, calling_ae_title: str, study_uid: str, audit: Audit | None = None) -> str:
    """Ask the peer to send the study to us; returns a summary of the final status (raises on failure)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    assoc = _associate(peer, calling_ae_title, StudyRootQueryRetrieveInformationModelMove, audit, AuditKind.RETRIEVE)
    final = None

    def audited(failure: str) -> None:
        code = f"0x{final.Status:04X}" if final is not None else "none"
        ok = final is not None and final.Status in (0x0000, 0xB000)
        outcome = AuditOutcome.COMPLETED if ok and not failure else AuditOutcome.FAILED
        completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0) if final is not None else 0
        detail = failure or f"C-MOVE to {calling_ae_title}: final status {code}"
        _audit(audit, AuditKind.RETRIEVE, peer, calling_ae_title, outcome, detail, (study_uid,), completed)

    with _exchange(assoc, audited):
        for status, _ in assoc.send_c_move(query, calling_ae_title, StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                raise RetrieveError(f"C-MOVE at {peer.ae_title}: no response (timeout or abort)")
            if status.Status not in MOVE_PENDING:
                final = status
    if final is None:
        raise RetrieveError(f"C-MOVE at {peer.ae_title}: no final status")
    counts = (
        f"{final.get('NumberOfCompletedSuboperations', '?')} sent, "
        f"{final.get('NumberOfFailedSuboperations', 0) or 0} failed"
    )
    if final.Status == 0x0000 or (final.Status == 0xB000 and final.get("NumberOfCompletedSuboperations", 0)):
        logger.info("C-MOVE of study %s from %s: %s", study_uid, peer.ae_title, counts)
        return f"status 0x{final.Status:04X}, {counts}"
    raise RetrieveError(f"C-MOVE of study {study_uid} at {peer.ae_title} failed: status 0x{final.Status:04X}, {counts}")
