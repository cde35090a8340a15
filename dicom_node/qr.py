"""Query/retrieve SCU: find a patient's earlier studies at the PACS (C-FIND, study root, study level) and ask
the PACS to send one to this node (C-MOVE with our AE title as the destination).

The PACS must know this node's AE title, host and port as a move destination, and this node must accept
the PACS as a storage peer (`peers.allowed`); the config check enforces the latter.
"""

from __future__ import annotations

import logging
from datetime import date

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove

from dicom_node.errors import RetrieveError
from immunode.config import QueryRetrieveSettings
from pipelines.pairing import parse_study_date
from pipelines.types import StudyFacts

logger = logging.getLogger(__name__)

PENDING = {0xFF00, 0xFF01}
MOVE_PENDING = {0xFF00}


def _associate(peer: QueryRetrieveSettings, calling_ae_title: str, context: str):  # noqa: ANN202
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.add_requested_context(context)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    except OSError as error:
        raise RetrieveError(f"cannot connect to {peer.ae_title} at {peer.host}:{peer.port}: {error}") from None
    if not assoc.is_established:
        raise RetrieveError(f"{peer.ae_title} at {peer.host}:{peer.port} did not accept the association")
    return assoc


def find_studies(
    peer: QueryRetrieveSettings,
    calling_ae_title: str,
    patient_id: str,
    issuer: str,
    earliest: date,
    latest: date,
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
    assoc = _associate(peer, calling_ae_title, StudyRootQueryRetrieveInformationModelFind)
    found = []
    try:
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
                        parse_study_date(str(identifier.get("StudyDate", ""))),
                        "CT" in modalities or not any(modalities),
                    )
                )
            elif code not in PENDING and code != 0x0000:
                raise RetrieveError(f"C-FIND at {peer.ae_title} failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    logger.info("C-FIND at %s: %d study(ies) in %s..%s", peer.ae_title, len(found), earliest, latest)
    return [f for f in found if f.study_instance_uid]


def move_study(peer: QueryRetrieveSettings, calling_ae_title: str, study_uid: str) -> str:
    """Ask the peer to send the study to us; returns a summary of the final status (raises on failure)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    assoc = _associate(peer, calling_ae_title, StudyRootQueryRetrieveInformationModelMove)
    final = None
    try:
        for status, _ in assoc.send_c_move(query, calling_ae_title, StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                raise RetrieveError(f"C-MOVE at {peer.ae_title}: no response (timeout or abort)")
            if status.Status not in MOVE_PENDING:
                final = status
    finally:
        if assoc.is_established:
            assoc.release()
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
