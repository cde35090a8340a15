"""Which stored study is a follow-up CT's baseline (longitudinal delta-radiomics method: T0 before, T1 after
the start of immunotherapy). Pure decisions on `StudyFacts`; the flow stores and logs every decision.

Rules: same PatientID and IssuerOfPatientID (an empty issuer matches only an empty issuer), a CT, a study
date between `window_max_weeks` and `window_min_weeks` before the follow-up. With an imported therapy start
and `use_therapy_start`: the baseline must be on or before the therapy start and the follow-up after it
(a study on or before the start is itself a baseline). Of several eligible studies the latest is chosen
(nearest to therapy start, as a pre-treatment baseline should be).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from immunode.config import PairingSettings
from pipelines.types import PairingChoice, PairingDecisionKind, StudyFacts


def parse_study_date(value: str) -> date | None:
    try:
        return datetime.strptime(value.strip(), "%Y%m%d").date()
    except (ValueError, AttributeError):
        return None


def search_window(followup: date, settings: PairingSettings) -> tuple[date, date]:
    """(earliest, latest) study date a baseline may have."""
    return (
        followup - timedelta(weeks=settings.window_max_weeks),
        followup - timedelta(weeks=settings.window_min_weeks),
    )


def _rejection(followup: StudyFacts, candidate: StudyFacts, earliest: date, latest: date, therapy: date | None) -> str:
    if candidate.patient_id != followup.patient_id:
        return "another PatientID"
    if candidate.issuer_of_patient_id != followup.issuer_of_patient_id:
        return f"same PatientID but issuer {candidate.issuer_of_patient_id or '(none)'!r}"
    if not candidate.has_ct:
        return "no CT"
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
        reason = _rejection(followup, candidate, earliest, latest, therapy)
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
