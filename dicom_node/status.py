"""The one table from domain errors to DICOM C-STORE failure statuses (PS3.4 B.2.3, PS3.7 C), also the Failure
Reasons of STOW-RS responses (PS3.18 I.2.2 uses the same codes), and the record of each refusal."""

from __future__ import annotations

from dicom_node.errors import DatasetInvalid, DatasetTooLarge, UndecodableDataset
from storage.audit import EventEntry
from storage.errors import IdentityMismatch, IndexUnavailable, InvalidIdentifier, OutOfResources

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
CANNOT_DECODE = 0xC210  # pynetdicom's "unable to decode the dataset"
PROCESSING_FAILURE = 0x0110
# In the "cannot understand" range: the instance contradicts the patient or study the index holds for its
# study or series; resending it unchanged will not help (PS3.4 leaves Cxxx to the implementation).
IDENTITY_CONFLICT = 0xC100

STORE_STATUS: dict[type[Exception], int] = {
    OutOfResources: OUT_OF_RESOURCES,
    IndexUnavailable: OUT_OF_RESOURCES,  # cannot be stored now; the sender should retry later
    DatasetTooLarge: OUT_OF_RESOURCES,  # a deflated data set beyond node.max_inflated_mb
    IdentityMismatch: IDENTITY_CONFLICT,
    UndecodableDataset: CANNOT_DECODE,
    DatasetInvalid: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    InvalidIdentifier: DATASET_DOES_NOT_MATCH_SOP_CLASS,
}


def store_status_for(error: Exception) -> int:
    for error_type, status in STORE_STATUS.items():
        if isinstance(error, error_type):
            return status
    return PROCESSING_FAILURE


def refusal_event(via: str, affected: str, calling: str, code: int, reason: str, study_uid: str) -> EventEntry:
    """The event recording that an instance received by `via` (C-STORE, STOW-RS, WADO-RS) was refused."""
    affected_text = affected[:64] if len(affected) <= 64 else affected[:61] + "..."
    message = f"{via} of {affected_text!r} from {calling[:16]!r} refused with 0x{code:04X}: {reason}"
    return EventEntry("ERROR", message, study_uid[:64])
