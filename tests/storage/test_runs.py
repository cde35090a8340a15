"""Node runs as several nodes on one index see them: a run is alive while its heartbeat is fresh; the claims
of a dead run (jobs it was running, deliveries it was sending) go back to the queue, a live run's stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from common.states import JobState
from storage import jobs, runs
from storage.database import Database
from storage.errors import ClaimLost
from storage.schema import Job, NodeRun, Patient, Study, utcnow


def _study(session, patient_id: str, study_uid: str) -> Study:
    """A patient and a study of theirs, flushed: the jobs' parent rows."""
    patient = Patient(patient_id=patient_id, issuer_of_patient_id="")
    session.add(patient)
    session.flush()
    study = Study(study_instance_uid=study_uid, patient_fk=patient.id, revision=1)
    session.add(study)
    session.flush()
    return study


@pytest.mark.postgres
def test_the_claims_of_a_dead_node_are_taken_back(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.session() as session:
            live = runs.begin_run(session, "live-host", 1).run_id
            dead = runs.begin_run(session, "dead-host", 2).run_id
            session.get(NodeRun, dead).heartbeat_at = utcnow() - runs.STALE_AFTER - timedelta(seconds=5)
            study = _study(session, "RUNS", "1.2.3")
            for claimer, attempts in ((live, 1), (dead, 1), (dead, 2)):
                session.add(
                    Job(
                        study_fk=study.id,
                        pipeline="pet_quant",
                        study_revision=1,
                        state=JobState.RUNNING,
                        attempts=attempts,
                        claimed_by=claimer,
                    )
                )
        with database.session() as session:
            assert runs.live_runs(session) == {live}
            taken, _ = runs.release_claims_of_dead_runs(session, max_attempts=2)
        assert taken == 2
        with database.session() as session:
            states = [(j.claimed_by, j.state) for j in session.scalars(select(Job).order_by(Job.id))]
        assert states == [(live, JobState.RUNNING), (None, JobState.PENDING), (None, JobState.FAILED)]
        # A second node starting leaves the live run's job alone.
        with database.session() as session:
            assert jobs.reset_interrupted_jobs(session, 2, runs.live_runs(session)) == 0
            # ... and a begin_run does not take the live run for a crashed one.
            start = runs.begin_run(session, "third", 3)
            assert live not in start.unclean_runs
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_pending_job_is_claimed_by_one_run_only(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.session() as session:
            study = _study(session, "CLAIM", "1.2.4")
            session.add(Job(study_fk=study.id, pipeline="pet_quant", study_revision=1, state=JobState.PENDING))
        with database.session() as session:
            (claimed,) = jobs.claim_pending_jobs(session, 5, run_id=7)
        with database.session() as session:
            assert jobs.claim_pending_jobs(session, 5, run_id=8) == []
            assert session.get(Job, claimed.job_id).claimed_by == 7
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_job_is_recorded_only_by_the_run_that_holds_it(database_url: str) -> None:
    """No job stays RUNNING without a holder that runs it, and none is finished twice: jobs this run holds but
    does not run go back to the queue; a job taken from a run (it was judged dead) cannot be finished or
    requeued by it; a finish whose commit went through is not repeated."""
    database = Database(database_url)
    try:
        with database.session() as session:
            for number in range(3):  # three studies: one study's jobs of a pipeline run one after another
                study = _study(session, f"FENCE{number}", f"1.2.5.{number}")
                session.add(Job(study_fk=study.id, pipeline="pet_quant", study_revision=1, state=JobState.PENDING))
        with database.session() as session:
            first, second, third = (spec.job_id for spec in jobs.claim_pending_jobs(session, 3, run_id=7))
        with database.session() as session:  # run 7 runs the first two only: the third goes back
            assert jobs.release_untracked_jobs(session, 7, {first, second}, max_attempts=2) == [third]
            claim = jobs.job_claim(session, first)
            assert jobs.check_claim(session, claim) is True
            jobs.finish_job(session, first, JobState.SUCCEEDED, "done")
        with database.session() as session:
            assert jobs.check_claim(session, claim) is False  # already finished by this claim: not again
            # The second job is taken from run 7 (judged dead) and claimed again by run 8.
            lost = jobs.job_claim(session, second)
            runs.requeue_or_fail([session.get(Job, second)], 2, "its node died")
        with database.session() as session:
            jobs.claim_pending_jobs(session, 3, run_id=8)
        with database.session() as session:
            with pytest.raises(ClaimLost):
                jobs.check_claim(session, lost)
            assert jobs.requeue_job_or_fail(session, second, "worker died", 2, run_id=7) is JobState.RUNNING
            assert jobs.return_interrupted_jobs(session, [second], run_id=7) == []
            assert session.get(Job, second).claimed_by == 8
    finally:
        database.dispose()
