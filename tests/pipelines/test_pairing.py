"""Baseline pairing: the rules and the decisions of the pairing stage, as pure functions over typed facts (the
query/retrieve peer passed in as a finder). The stage on a real SQL store: `tests/immunode/test_flow.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from common.states import JobState, PairingOutcome
from common.types import StudyFacts
from pipelines.errors import BaselineNotRetrieved
from pipelines.pairing import (
    PairingDecisionKind,
    PairingSettings,
    choose_baseline,
    decide_new,
    decide_waiting,
)

FOLLOW_UP = StudyFacts("1.2.3.100", "P1", "HOSP-A", date(2026, 3, 16))
RULES = PairingSettings()


def _study(uid: str, days_before: int, patient: str = "P1", issuer: str = "HOSP-A", ct: bool = True) -> StudyFacts:
    modalities = frozenset({"CT", "PT"} if ct else {"PT"})
    return StudyFacts(uid, patient, issuer, FOLLOW_UP.study_date - timedelta(days=days_before), modalities)


def test_latest_study_in_the_window_is_the_baseline() -> None:
    choice = choose_baseline(FOLLOW_UP, [_study("1.2.3.1", 100), _study("1.2.3.2", 60), _study("1.2.3.3", 20)], RULES)
    assert choice.kind is PairingDecisionKind.PAIRED and choice.baseline.study_instance_uid == "1.2.3.2"
    assert "latest of 2 eligible" in choice.reason and "1.2.3.3: study date 2026-02-24 outside" in choice.reason


def test_wrong_patient_other_issuer_and_no_ct_never_pair() -> None:
    candidates = [
        _study("1.2.3.4", 60, patient="P2"),
        _study("1.2.3.5", 60, issuer="HOSP-B"),
        _study("1.2.3.6", 60, issuer=""),
        _study("1.2.3.7", 60, ct=False),
    ]
    choice = choose_baseline(FOLLOW_UP, candidates, RULES)
    assert choice.kind is PairingDecisionKind.NO_BASELINE and choice.baseline is None
    assert "1.2.3.4: another PatientID" in choice.reason
    assert "1.2.3.5: same PatientID but issuer 'HOSP-B'" in choice.reason
    assert "1.2.3.6: same PatientID but issuer '(none)'" in choice.reason
    assert "1.2.3.7: no CT" in choice.reason


def test_window_limits_and_therapy_start() -> None:
    six_weeks, sixteen_weeks = 42, 112
    assert choose_baseline(FOLLOW_UP, [_study("1.2.3.8", six_weeks)], RULES).kind is PairingDecisionKind.PAIRED
    assert choose_baseline(FOLLOW_UP, [_study("1.2.3.9", sixteen_weeks)], RULES).kind is PairingDecisionKind.PAIRED
    assert (
        choose_baseline(FOLLOW_UP, [_study("1.2.3.10", six_weeks - 1)], RULES).kind is PairingDecisionKind.NO_BASELINE
    )
    assert (
        choose_baseline(FOLLOW_UP, [_study("1.2.3.11", sixteen_weeks + 1)], RULES).kind
        is PairingDecisionKind.NO_BASELINE
    )
    # Therapy started 50 days before the follow-up: a study 45 days before it is on treatment, not a baseline.
    therapy = FOLLOW_UP.study_date - timedelta(days=50)
    choice = choose_baseline(FOLLOW_UP, [_study("1.2.3.12", 45), _study("1.2.3.13", 70)], RULES, therapy)
    assert choice.baseline.study_instance_uid == "1.2.3.13" and "after therapy start" in choice.reason
    ignored = choose_baseline(FOLLOW_UP, [_study("1.2.3.12", 45)], PairingSettings(use_therapy_start=False), therapy)
    assert ignored.baseline.study_instance_uid == "1.2.3.12"
    # A study on or before the therapy start is itself a baseline.
    own = choose_baseline(_study("1.2.3.14", 60), [_study("1.2.3.15", 100)], RULES, therapy)
    assert own.kind is PairingDecisionKind.BASELINE_ITSELF


NOW = datetime(2026, 3, 16, 12, 0)


@dataclass
class Finder:
    """A query/retrieve peer that holds `studies`, records what was asked, and fails when told to."""

    studies: list[StudyFacts] = field(default_factory=list)
    fail: str = ""
    asked: list[tuple[date, date]] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    peer: str = "PACS"

    def find(self, followup: StudyFacts, earliest: date, latest: date) -> list[StudyFacts]:
        if self.fail:
            raise BaselineNotRetrieved(self.fail)
        self.asked.append((earliest, latest))
        return self.studies

    def retrieve(self, study_instance_uid: str) -> str:
        self.moved.append(study_instance_uid)
        return "C-MOVE status 0x0000, 12 sent, 0 failed"


def _new(candidates: list[StudyFacts], **kwargs: object) -> object:
    return decide_new(FOLLOW_UP, candidates, RULES, modality="CT", now=NOW, **kwargs)


def test_decisions_for_a_new_job() -> None:
    assert _new([], awaited=True).outcome is PairingOutcome.BASELINE_ITSELF
    stored = _study("1.2.3.20", 60)
    still_coming = _new([stored], analysis_state={"1.2.3.20": JobState.RUNNING}.get)
    assert still_coming.outcome is PairingOutcome.WAITING and still_coming.baseline_study_uid == "1.2.3.20"
    assert still_coming.waiting_until == NOW + timedelta(seconds=RULES.baseline_wait_s)
    assert "its CT analysis is RUNNING: waiting" in still_coming.reason
    ready = _new([stored], analysis_state={"1.2.3.20": JobState.SUCCEEDED}.get)
    assert ready.outcome is PairingOutcome.PAIRED and ready.waiting_until is None
    never = _new([stored])
    assert never.outcome is PairingOutcome.PAIRED and "no CT analysis result (never analysed)" in never.reason
    alone = _new([])
    assert alone.outcome is PairingOutcome.NO_BASELINE and "no query/retrieve peer configured" in alone.reason


def test_the_finder_is_asked_in_the_window_and_its_study_retrieved() -> None:
    remote = _study("1.2.3.30", 70)
    finder = Finder([remote, _study("1.2.3.31", 70, patient="P9")])
    decision = _new([], finder=finder)
    assert decision.outcome is PairingOutcome.RETRIEVING and decision.baseline_study_uid == "1.2.3.30"
    assert finder.moved == ["1.2.3.30"] and finder.asked == [(date(2025, 11, 24), date(2026, 2, 2))]
    assert "at PACS:" in decision.reason and "C-MOVE status 0x0000" in decision.reason
    assert decision.waiting_until == NOW + timedelta(seconds=RULES.baseline_wait_s)
    empty = _new([], finder=Finder([_study("1.2.3.32", 10)]))
    assert empty.outcome is PairingOutcome.NO_BASELINE and "not at PACS either" in empty.reason
    failing = _new([], finder=Finder(fail="cannot connect to PACS"))
    assert failing.outcome is PairingOutcome.NO_BASELINE
    assert failing.reason.endswith("query/retrieve failed: cannot connect to PACS")


def test_decisions_for_a_waiting_job() -> None:
    until = NOW + timedelta(hours=1)
    baseline = _study("1.2.3.40", 60)
    assert decide_waiting(FOLLOW_UP, "1.2.3.40", baseline, JobState.RUNNING, until, NOW) is None
    paired = decide_waiting(FOLLOW_UP, "1.2.3.40", baseline, JobState.SUCCEEDED, until, NOW)
    assert paired.outcome is PairingOutcome.PAIRED and paired.baseline_study_uid == "1.2.3.40"
    impostor = _study("1.2.3.40", 60, issuer="HOSP-B")
    refused = decide_waiting(FOLLOW_UP, "1.2.3.40", impostor, JobState.SUCCEEDED, until, NOW)
    assert refused.outcome is PairingOutcome.NO_BASELINE and "not the follow-up's: not paired" in refused.reason
    failed = decide_waiting(FOLLOW_UP, "1.2.3.40", baseline, JobState.FAILED, until, NOW)
    assert failed.outcome is PairingOutcome.PAIRED and "without delta features" in failed.reason
    late = decide_waiting(FOLLOW_UP, "1.2.3.40", None, None, until, until)
    assert late.outcome is PairingOutcome.TIMED_OUT and "not received in time" in late.reason
