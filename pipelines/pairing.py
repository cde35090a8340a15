"""Which stored study is a follow-up's baseline, for longitudinal pipelines (the delta-radiomics method: T0
before, T1 after the start of immunotherapy). Pure decisions over typed facts, each returning a frozen
`PairingDecision` with its reason; the flow (`immunode.flow`) reads the facts from the store, passes the
query/retrieve peer in as a `BaselineFinder`, and records what was decided.

Rules: same PatientID and IssuerOfPatientID (an empty issuer matches only an empty issuer), the pipeline's
modality in the study, a study date between `window_max_weeks` and `window_min_weeks` before the follow-up.
A study after a follow-up already paired with a baseline is a later assessment of that baseline (T2, T3, ...:
the method follows the patient up to progression), and a follow-up is never itself a baseline.
With an imported therapy start and `use_therapy_start`: the baseline must be on or before the therapy start
and the follow-up after it (a study on or before the start is itself a baseline). Of several eligible
studies the latest is chosen (nearest to therapy start, as a pre-treatment baseline should be).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from pydantic import Field, model_validator

from common.settings import Strict
from common.states import JobState, PairingOutcome
from common.types import EarlierFollowUp, StudyFacts
from pipelines.errors import BaselineNotRetrieved


class PairingSettings(Strict):
    """How a follow-up finds its baseline (same PatientID and IssuerOfPatientID, the modality, within the window)."""

    window_min_weeks: float = Field(6.0, ge=0)  # the baseline is at least this long before the follow-up ...
    window_max_weeks: float = Field(16.0, gt=0)  # ... and at most this long
    # With an imported therapy start date: the baseline must be on or before it, the follow-up after it.
    use_therapy_start: bool = True
    # How long a follow-up waits for a baseline being retrieved or analysed before it runs without one.
    baseline_wait_s: float = Field(3600.0, ge=0)

    @model_validator(mode="after")
    def _window_is_a_window(self) -> PairingSettings:
        if self.window_max_weeks <= self.window_min_weeks:
            raise ValueError("window_max_weeks must be greater than window_min_weeks")
        return self


class PairingDecisionKind(enum.Enum):
    PAIRED = "PAIRED"
    NO_BASELINE = "NO_BASELINE"
    BASELINE_ITSELF = "BASELINE_ITSELF"


@dataclass(frozen=True)
class PairingChoice:
    """The rules applied to a set of candidate studies."""

    kind: PairingDecisionKind
    baseline: StudyFacts | None
    reason: str


@dataclass(frozen=True)
class PairingDecision:
    """What the pairing stage records for a job: the outcome, why, the baseline chosen or awaited, and until
    when the job waits (outcomes that wait: RETRIEVING, WAITING)."""

    outcome: PairingOutcome
    reason: str
    baseline_study_uid: str = ""
    waiting_until: datetime | None = None


class BaselineFinder(Protocol):
    """The query/retrieve peer, as the pairing decisions use it (`immunode.flow` adapts `dicom_node.qr`).
    Both calls raise `pipelines.errors.BaselineNotRetrieved` with the reason when the peer fails."""

    @property
    def peer(self) -> str: ...  # the peer's AE title, named in the reasons

    def find(self, followup: StudyFacts, earliest: date, latest: date) -> Sequence[StudyFacts]: ...

    def retrieve(self, study_instance_uid: str) -> str: ...  # how it went, as text ("C-MOVE status ...", "WADO-RS: ...")


# Analysis states of a baseline that is still coming: the follow-up waits for its result.
STILL_COMING = (JobState.PAIRING, JobState.WAITING_BASELINE, JobState.PENDING, JobState.RUNNING)


def search_window(followup: date, settings: PairingSettings) -> tuple[date, date]:
    """(earliest, latest) study date a baseline may have."""
    return (
        followup - timedelta(weeks=settings.window_max_weeks),
        followup - timedelta(weeks=settings.window_min_weeks),
    )


def _rejection(
    followup: StudyFacts, candidate: StudyFacts, earliest: date, latest: date, therapy: date | None, modality: str
) -> str:
    if candidate.patient_id != followup.patient_id:
        return "another PatientID"
    if candidate.issuer_of_patient_id != followup.issuer_of_patient_id:
        return f"same PatientID but issuer {candidate.issuer_of_patient_id or '(none)'!r}"
    if not candidate.may_hold(modality):
        return f"no {modality}"
    if candidate.study_date is None:
        return "no study date"
    if not earliest <= candidate.study_date <= latest:
        return f"study date {candidate.study_date} outside {earliest}..{latest}"
    if therapy is not None and candidate.study_date > therapy:
        return f"study date {candidate.study_date} after therapy start {therapy}"
    return ""


def choose_baseline(
    followup: StudyFacts,
    candidates: Sequence[StudyFacts],
    settings: PairingSettings,
    therapy_start: date | None = None,
    modality: str = "CT",
) -> PairingChoice:
    therapy = therapy_start if settings.use_therapy_start else None
    if followup.study_date is None:
        return PairingChoice(PairingDecisionKind.NO_BASELINE, None, "the follow-up has no study date; not paired")
    if therapy is not None and followup.study_date <= therapy:
        return PairingChoice(
            PairingDecisionKind.BASELINE_ITSELF,
            None,
            f"study date {followup.study_date} on or before therapy start {therapy}: a baseline",
        )
    earliest, latest = search_window(followup.study_date, settings)
    notes = []
    eligible = []
    for candidate in candidates:
        if candidate.study_instance_uid == followup.study_instance_uid:
            continue
        reason = _rejection(followup, candidate, earliest, latest, therapy, modality)
        if reason:
            notes.append(f"{candidate.study_instance_uid}: {reason}")
        else:
            eligible.append(candidate)
    window = f"window {earliest}..{latest}" + (f", therapy start {therapy}" if therapy else "")
    detail = f" (rejected: {'; '.join(notes)})" if notes else ""
    if not eligible:
        return PairingChoice(PairingDecisionKind.NO_BASELINE, None, f"no baseline in the {window}{detail}")
    chosen = max(eligible, key=lambda c: (c.study_date, c.study_instance_uid))
    others = len(eligible) - 1
    reason = f"baseline {chosen.study_instance_uid} of {chosen.study_date} ({window}" + (
        f"; latest of {others + 1} eligible)" if others else ")"
    )
    reason += detail
    return PairingChoice(PairingDecisionKind.PAIRED, chosen, reason)


def decide_new(
    followup: StudyFacts,
    candidates: Sequence[StudyFacts],
    settings: PairingSettings,
    *,
    modality: str,
    now: datetime,
    therapy_start: date | None = None,
    awaited: bool = False,
    analysis_state: Callable[[str], JobState | None] = lambda uid: None,
    finder: BaselineFinder | None = None,
    follow_ups: Sequence[EarlierFollowUp] = (),
) -> PairingDecision:
    """A new job's baseline: the study itself when a waiting follow-up awaits it or it precedes therapy; a stored
    study (waiting while its own analysis is still coming); else one the finder retrieves (waiting for it);
    else none, with the reasons. `analysis_state` gives the state of a stored study's newest job of this
    pipeline (None: never analysed)."""
    if awaited:
        return PairingDecision(PairingOutcome.BASELINE_ITSELF, "awaited as the baseline of a waiting follow-up")
    followed = {f.study_instance_uid for f in follow_ups}
    choice = choose_baseline(
        followup, [c for c in candidates if c.study_instance_uid not in followed], settings, therapy_start, modality
    )
    wait_until = now + timedelta(seconds=settings.baseline_wait_s)
    if choice.kind is PairingDecisionKind.BASELINE_ITSELF:
        return PairingDecision(PairingOutcome.BASELINE_ITSELF, choice.reason)
    later = _later_assessment(followup, follow_ups)
    if later is not None:
        choice = later
    if choice.kind is PairingDecisionKind.PAIRED:
        baseline_uid = choice.baseline.study_instance_uid  # type: ignore[union-attr]
        state = analysis_state(baseline_uid)
        if state in STILL_COMING:
            reason = f"{choice.reason}; its {modality} analysis is {state.value}: waiting"  # type: ignore[union-attr]
            return PairingDecision(PairingOutcome.WAITING, reason, baseline_uid, wait_until)
        note = (
            ""
            if state is JobState.SUCCEEDED
            else f"; the baseline has no {modality} analysis result ({state.value if state else 'never analysed'})"
        )
        return PairingDecision(PairingOutcome.PAIRED, choice.reason + note, baseline_uid)
    return _retrieve_or_go_without(followup, choice.reason, settings, therapy_start, modality, wait_until, finder)


def _later_assessment(followup: StudyFacts, follow_ups: Sequence[EarlierFollowUp]) -> PairingChoice | None:
    """The baseline of the latest earlier follow-up: this study is a later assessment of it."""
    if followup.study_date is None:
        return None
    earlier = [f for f in follow_ups if f.study_date is not None and f.study_date < followup.study_date]
    if not earlier:
        return None
    latest = max(earlier, key=lambda f: (f.study_date, f.study_instance_uid))
    baseline = StudyFacts(latest.baseline_study_uid, followup.patient_id, followup.issuer_of_patient_id, None)
    of_it = [f for f in earlier if f.baseline_study_uid == latest.baseline_study_uid]
    reason = (
        f"a later assessment of baseline {latest.baseline_study_uid}: after {len(of_it)} earlier follow-up(s) "
        f"of it (latest {latest.study_instance_uid} of {latest.study_date})"
    )
    return PairingChoice(PairingDecisionKind.PAIRED, baseline, reason)


def _retrieve_or_go_without(
    followup: StudyFacts,
    reason: str,
    settings: PairingSettings,
    therapy_start: date | None,
    modality: str,
    wait_until: datetime,
    finder: BaselineFinder | None,
) -> PairingDecision:
    if finder is None:
        return PairingDecision(PairingOutcome.NO_BASELINE, f"{reason}; no query/retrieve peer configured")
    if followup.study_date is None:
        return PairingDecision(PairingOutcome.NO_BASELINE, reason)
    earliest, latest = search_window(followup.study_date, settings)
    try:
        remote = choose_baseline(followup, finder.find(followup, earliest, latest), settings, therapy_start, modality)
        if remote.kind is not PairingDecisionKind.PAIRED:
            return PairingDecision(
                PairingOutcome.NO_BASELINE, f"{reason}; not at {finder.peer} either: {remote.reason}"
            )
        baseline_uid = remote.baseline.study_instance_uid  # type: ignore[union-attr]
        status = finder.retrieve(baseline_uid)
    except BaselineNotRetrieved as error:
        return PairingDecision(PairingOutcome.NO_BASELINE, f"{reason}; query/retrieve failed: {error}")
    return PairingDecision(
        PairingOutcome.RETRIEVING,
        f"{reason}; at {finder.peer}: {remote.reason}; {status}; "
        f"waiting until {wait_until:%Y-%m-%d %H:%M:%S} UTC",
        baseline_uid,
        wait_until,
    )


def decide_waiting(
    followup: StudyFacts,
    baseline_uid: str,
    baseline: StudyFacts | None,
    analysis_state: JobState | None,
    waiting_until: datetime | None,
    now: datetime,
) -> PairingDecision | None:
    """A waiting job: paired once its baseline is analysed (and is the same patient), paired without Δ when
    that analysis failed, timed out past `waiting_until`; None while it should go on waiting."""
    if analysis_state is JobState.SUCCEEDED and baseline is not None:
        if (baseline.patient_id, baseline.issuer_of_patient_id) == (
            followup.patient_id,
            followup.issuer_of_patient_id,
        ):
            return PairingDecision(PairingOutcome.PAIRED, f"baseline {baseline_uid} analysed", baseline_uid)
        return PairingDecision(
            PairingOutcome.NO_BASELINE,
            f"study {baseline_uid} arrived with PatientID {baseline.patient_id!r} issuer "
            f"{baseline.issuer_of_patient_id!r}, not the follow-up's: not paired",
        )
    if analysis_state is JobState.FAILED:
        return PairingDecision(
            PairingOutcome.PAIRED,
            f"baseline {baseline_uid} analysis failed; reported without delta features",
            baseline_uid,
        )
    if waiting_until is None or now >= waiting_until:
        what = "not analysed" if analysis_state else "not received"
        return PairingDecision(
            PairingOutcome.TIMED_OUT,
            f"baseline {baseline_uid} {what} in time; reported without delta features",
            baseline_uid,
        )
    return None
