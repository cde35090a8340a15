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
