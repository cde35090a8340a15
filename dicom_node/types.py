"""Typed values of the networking layer."""

from __future__ import annotations

from dataclasses import dataclass


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
