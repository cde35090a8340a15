"""States and kinds the index stores and the stages decide on (stored by name, see `storage.schema`)."""

from __future__ import annotations

import enum


class JobState(enum.Enum):
    PAIRING = "PAIRING"  # a longitudinal job looking for its baseline (decided by the pairing stage)
    WAITING_BASELINE = "WAITING_BASELINE"  # baseline being retrieved or analysed; resumes or times out
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the reason is in Job.error; nothing is sent for it
    SUPERSEDED = "SUPERSEDED"  # the study re-opened before this job ran


class PairingOutcome(enum.Enum):
    PAIRED = "PAIRED"  # a stored baseline was chosen
    BASELINE_ITSELF = "BASELINE_ITSELF"  # the study is a baseline (retrieved for, or earlier than, a follow-up)
    NO_BASELINE = "NO_BASELINE"  # none stored and none found on the query/retrieve peer (or none configured)
    RETRIEVING = "RETRIEVING"  # found on the query/retrieve peer; C-MOVE requested, job waits
    WAITING = "WAITING"  # stored baseline not analysed yet; job waits for its result
    TIMED_OUT = "TIMED_OUT"  # the awaited baseline did not arrive or was not analysed in time

    @property
    def waits(self) -> bool:
        """The job waits for its baseline (state WAITING_BASELINE) rather than running now."""
        return self in (PairingOutcome.RETRIEVING, PairingOutcome.WAITING)

    @property
    def expects_baseline(self) -> bool:
        """A baseline was chosen or awaited: a report without one says why."""
        return self in (
            PairingOutcome.PAIRED,
            PairingOutcome.TIMED_OUT,
            PairingOutcome.RETRIEVING,
            PairingOutcome.WAITING,
        )


class OutputKind(enum.Enum):
    SEG = "SEG"
    SR = "SR"


class SegEncoding(enum.Enum):
    """How a DICOM SEG holds its segments, chosen per result destination by what its viewers decode
    (docs/conformance-outputs.md): FRACTIONAL, 8 bits per pixel and segment (Segmentation Storage, drawn right by
    OHIF, 3D Slicer and Orthanc's viewers); LABELMAP, one 8- or 16-bit label image per slice (Label Map
    Segmentation Storage, 2024: OHIF 3.10+, receivers that know the SOP class); BINARY, 1 bit per pixel
    (Segmentation Storage; web viewers mis-decode frames whose pixel count is not a multiple of 8)."""

    FRACTIONAL = "FRACTIONAL"
    LABELMAP = "LABELMAP"
    BINARY = "BINARY"
