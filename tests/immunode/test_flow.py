"""The pairing stage on a real SQL store (SQLite, and PostgreSQL when configured): facts read from the index,
decisions recorded with their reasons, jobs moved on."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.states import JobState, PairingOutcome
from immunode import flow
from storage.database import Database
from storage.schema import Job, Pairing, Patient, Series, Study, StudyState


def _add_study(session: Session, uid: str, patient: Patient, when: date, ct: bool = True) -> Study:
    study = Study(study_instance_uid=uid, patient=patient, study_date=f"{when:%Y%m%d}", state=StudyState.COMPLETE)
    session.add(study)
    session.add(Series(series_instance_uid=uid + ".1", study=study, modality="CT" if ct else "PT"))
    session.flush()
    return study


def test_pairing_stage_on_the_store(database_url: str, make_settings) -> None:
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
