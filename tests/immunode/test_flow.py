"""The pairing stage on a real SQL store (SQLite, and PostgreSQL when configured): facts read from the index,
decisions recorded with their reasons, jobs moved on."""

from __future__ import annotations

import hashlib
import itertools
import random
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.states import JobState, PairingOutcome
from immunode import flow
from immunode.routing import route
from storage import studies
from storage.database import Database
from storage.files import FileLayout
from storage.jobs import finish_job
from storage.schema import Job, Pairing, Patient, Series, Study, StudyState
from storage.store import InstanceStore
from storage.types import InstanceHeader


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


# --- a patient's course whatever the arrival order ----------------------------------------------------------

COURSE = {"T0": "20260105", "T1": "20260316", "T2": "20260615"}  # baseline, response at 10 weeks, T2 at 23 weeks


def _arrive(store: InstanceStore, patient: str, name: str) -> str:
    """One CT instance of the patient's study `name` received (its content is never analysed here)."""
    digest = int(hashlib.sha256(f"{patient}/{name}".encode()).hexdigest(), 16) % 10**20
    uid = f"1.2.826.0.1.3680043.10.{digest}"
    header = InstanceHeader(
        sop_class_uid=str(CTImageStorage),
        sop_instance_uid=f"{uid}.1.1",
        study_instance_uid=uid,
        series_instance_uid=f"{uid}.1",
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        patient_id=patient,
        issuer_of_patient_id="",
        modality="CT",
        study_date=COURSE[name],
    )
    store.store(header, b"header only", "STORESCU")
    return uid


def _route(settings, database: Database, uid: str) -> None:
    """The route stage for one quiet study (the others of the association still arriving)."""
    with database.session() as session:
        (study,) = [s for s in studies.quiet_studies(session, timedelta(0)) if s.study_instance_uid == uid]
    decisions = route(study, settings.routing.rules, settings.registry)
    with database.session() as session:
        studies.complete_study(session, study, [d.job() for d in decisions])


def _work(settings, database: Database, rng: random.Random, finished: list[str]) -> None:
    """Pair, then 'analyse' pending jobs in a random order (the worker's part: the job finishes), until still."""
    for _ in range(20):
        flow.pair_jobs(settings, database)
        with database.session() as session:
            pending = list(session.scalars(select(Job).where(Job.state == JobState.PENDING)).all())
            if not pending:
                return
            job = rng.choice(pending)
            finished.append(job.study.study_instance_uid)
            finish_job(session, job.id, JobState.SUCCEEDED, "analysed")
    raise AssertionError("the pairing stage did not settle")


def _course_of(database: Database, uids: dict[str, str]) -> dict[str, list[tuple[PairingOutcome, str, str]]]:
    """Study name -> the pairing decisions of each of its jobs: (outcome, baseline name, reason)."""
    names = {uid: name for name, uid in uids.items()}
    found: dict[str, list] = {}
    with database.session() as session:
        for name, uid in uids.items():
            found[name] = [
                (p.outcome, names.get(p.baseline_study_uid, p.baseline_study_uid), p.reason)
                for p in session.scalars(
                    select(Pairing)
                    .join(Job, Job.id == Pairing.job_fk)
                    .join(Study, Study.id == Job.study_fk)
                    .where(Study.study_instance_uid == uid)
                    .order_by(Pairing.id)
                ).all()
            ]
    return found


@pytest.mark.parametrize("order", list(itertools.permutations(COURSE)), ids="-".join)
def test_follow_ups_take_their_place_by_study_date_whatever_the_arrival_order(
    order: tuple[str, ...], tmp_path: Path, database_url: str, make_settings
) -> None:
    """Baseline, T1 and T2 of one patient: in one association (routed together, or one by one while the others
    still arrive) and days apart, in every order, repeated with the analyses finishing in random orders. T1
    pairs with the baseline, T2 is a later assessment of the same baseline analysed after T1, never paired with
    T1; what was analysed before an earlier study arrived is analysed again, saying why."""
    settings = make_settings(
        database_url, routing={"rules": [{"name": "ct", "pipeline": "ct_radiomics", "series": {"modality": "CT"}}]}
    )
    store = InstanceStore(Database(settings.database_url), FileLayout(tmp_path / "root"))
    database = store.database
    try:
        for schedule, seed in itertools.product(("together", "one by one", "days apart"), range(2)):
            patient = f"P-{'-'.join(order)}-{schedule}-{seed}"
            rng = random.Random(seed)
            finished: list[str] = []
            uids = {}
            if schedule == "days apart":
                for name in order:
                    uids[name] = _arrive(store, patient, name)
                    _route(settings, database, uids[name])
                    _work(settings, database, rng, finished)
            else:
                uids = {name: _arrive(store, patient, name) for name in order}
                for name in order:
                    _route(settings, database, uids[name])
                    if schedule == "one by one":
                        _work(settings, database, rng, finished)
                _work(settings, database, rng, finished)
            course = _course_of(database, uids)
            label = f"{order} {schedule} seed {seed}: {course}"
            # The last decision of each study: its place in the course.
            # A baseline: named as such once a follow-up of it is stored (always, in one association).
            first = schedule == "days apart" and order.index("T0") < order.index("T1")
            role = PairingOutcome.NO_BASELINE if first else PairingOutcome.BASELINE_ITSELF
            assert course["T0"][-1][:2] == (role, ""), label
            assert course["T1"][-1][:2] == (PairingOutcome.PAIRED, "T0"), label
            assert course["T2"][-1][:2] == (PairingOutcome.PAIRED, "T0"), label
            assert "a later assessment of baseline" in course["T2"][-1][2], label
            # Each study's newest analysis ran after those it counts.
            last = {uid: index for index, uid in enumerate(finished)}
            assert last[uids["T0"]] < last[uids["T1"]] < last[uids["T2"]], label
            if schedule != "days apart":  # in one association: each analysed once, T2 never paired with T1
                assert sorted(finished) == sorted(uids.values()), label
                assert all(baseline != "T1" for _, baseline, _ in course["T2"]), label
            with database.session() as session:
                reasons = session.scalars(
                    select(Job.reason)
                    .join(Study, Study.id == Job.study_fk)
                    .where(Study.study_instance_uid.in_(uids.values()))
                ).all()
            assert sum("re-paired" in r for r in reasons) == len(finished) - 3, label
    finally:
        database.dispose()
