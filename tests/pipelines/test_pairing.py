"""Baseline pairing rules (pure decisions) and the pairing stage on a real SQL store."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import select

from immunode.config import PairingSettings
from pipelines import flow
from pipelines.pairing import choose_baseline
from pipelines.types import PairingDecisionKind, StudyFacts
from storage.database import Database
from storage.schema import Job, JobState, Pairing, PairingOutcome, Patient, Series, Study, StudyState

FOLLOW_UP = StudyFacts("1.2.3.100", "P1", "HOSP-A", date(2026, 3, 16))
RULES = PairingSettings()


def _study(uid: str, days_before: int, patient: str = "P1", issuer: str = "HOSP-A", ct: bool = True) -> StudyFacts:
    return StudyFacts(uid, patient, issuer, FOLLOW_UP.study_date - timedelta(days=days_before), ct)


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


def _add_study(session, uid: str, patient: Patient, when: date, ct: bool = True) -> Study:  # noqa: ANN001
    study = Study(study_instance_uid=uid, patient=patient, study_date=f"{when:%Y%m%d}", state=StudyState.COMPLETE)
    session.add(study)
    session.add(Series(series_instance_uid=uid + ".1", study=study, modality="CT" if ct else "PT"))
    session.flush()
    return study


def test_pairing_stage_on_the_store(database_url: str, make_settings) -> None:  # noqa: ANN001
    settings = make_settings(database_url)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            a, b = (
                Patient(patient_id="P1", issuer_of_patient_id="HOSP-A"),
                Patient(patient_id="P1", issuer_of_patient_id="HOSP-B"),
            )
            other = Patient(patient_id="P2", issuer_of_patient_id="HOSP-A")
            session.add_all([a, b, other])
            follow_up = _add_study(session, "1.2.3.100", a, date(2026, 3, 16))
            _add_study(session, "1.2.3.101", b, date(2026, 1, 10))  # same PatientID, other issuer
            _add_study(session, "1.2.3.102", other, date(2026, 1, 10))  # another patient
            job = Job(study=follow_up, pipeline="ct_radiomics", study_revision=1, state=JobState.PAIRING)
            session.add(job)
            session.flush()
            job_id = job.id
        flow.pair_jobs(settings, database)
        with database.session() as session:
            (pairing,) = session.scalars(select(Pairing).where(Pairing.job_fk == job_id)).all()
            assert pairing.outcome is PairingOutcome.NO_BASELINE and not pairing.baseline_study_uid
            assert "1.2.3.101: same PatientID but issuer 'HOSP-B'" in pairing.reason
            assert "1.2.3.102" not in pairing.reason  # another patient's study is never even a candidate
            assert "no query/retrieve peer configured" in pairing.reason
            assert session.get(Job, job_id).state is JobState.PENDING
            # The right baseline arrives; its analysis is still pending: the follow-up waits for it.
            baseline = _add_study(session, "1.2.3.103", session.get(Patient, a.id), date(2026, 1, 12))
            session.add(Job(study=baseline, pipeline="ct_radiomics", study_revision=1, state=JobState.PENDING))
            again = Job(study=session.get(Study, follow_up.id), pipeline="ct_radiomics", study_revision=2)
            again.state = JobState.PAIRING
            session.add(again)
            session.flush()
            again_id = again.id
        flow.pair_jobs(settings, database)
        with database.session() as session:
            (waiting,) = session.scalars(select(Pairing).where(Pairing.job_fk == again_id)).all()
            assert waiting.outcome is PairingOutcome.WAITING and waiting.baseline_study_uid == "1.2.3.103"
            assert session.get(Job, again_id).state is JobState.WAITING_BASELINE
            # The baseline's analysis finishes: the next pass releases the follow-up, paired.
            session.scalars(select(Job).where(Job.study_fk == baseline.id)).one().state = JobState.SUCCEEDED
        flow.pair_jobs(settings, database)
        with database.session() as session:
            outcomes = session.scalars(
                select(Pairing.outcome).where(Pairing.job_fk == again_id).order_by(Pairing.id)
            ).all()
            assert outcomes == [PairingOutcome.WAITING, PairingOutcome.PAIRED]
            assert session.get(Job, again_id).state is JobState.PENDING
    finally:
        database.dispose()
