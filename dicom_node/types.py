"""Typed values of the networking layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendResult:
    sop_instance_uid: str
    ok: bool
    detail: str  # status code in hex or the reason nothing came back
