"""Typed values of the networking layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SendResult:
    sop_instance_uid: str
    ok: bool
    detail: str  # status code in hex or the reason nothing came back


@dataclass(frozen=True)
class StoreObservation:
    """One C-STORE as the SCP answered it, for metrics: the calling AE, the status sent, the data set's size and
    how long validating, writing and indexing took."""

    calling_ae_title: str
    status: int
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE-RQ whose data set has been received to a file, as the SCP's store handler gets it (from the
    fast path, `dicom_node.fast_store`, or from pynetdicom's C-STORE event)."""

    assoc: object  # the association it came on (the SCP keeps per-association audit state under it)
    calling_ae_title: str
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    abstract_syntax: str  # of the presentation context it came on
    transfer_syntax: str  # ... and its transfer syntax: the data set's encoding
    dataset_path: Path  # preamble, File Meta Information, then the data set as received
    dataset_offset: int | None = None  # where the data set starts in that file, when known
    sha256: str | None = None  # of that file, when computed as it was written
    size: int | None = None  # of that file, when counted as it was written
    dataset: bytes | None = None  # the data set's bytes (as in the file after `dataset_offset`), when kept in memory
    receive_error: str | None = None  # the disk refused the file while the data set arrived: answered 0xA700
