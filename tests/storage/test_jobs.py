"""The job queue: claims, interruptions by a stop, attempts."""

from __future__ import annotations

from common.states import JobState
from storage import jobs
from storage.schema import Job
from tests.storage.conftest import complete


def test_claimed_jobs_interrupted_by_a_stop_run_again_until_attempts_are_used(stored) -> None:
    database, _, study = stored
    (job_id,) = complete(database, study.pet_series_uid)
    with database.session() as session:
        (spec,) = jobs.claim_pending_jobs(session, 4)
    assert spec.job_id == job_id
    with database.session() as session:
        assert jobs.reset_interrupted_jobs(session, max_attempts=2) == 1
        assert session.get(Job, job_id).state is JobState.PENDING
        jobs.claim_pending_jobs(session, 4)
    with database.session() as session:
        jobs.reset_interrupted_jobs(session, max_attempts=2)
        job = session.get(Job, job_id)
        assert job.state is JobState.FAILED and "interrupted 2 time(s)" in job.error


def test_versions_of_one_study_and_pipeline_run_in_order(stored) -> None:
    """A second job of the pipeline for the study (a reader's annotation, a re-pairing) is not claimed while the
    first runs: its report supersedes the first one's, which must exist by then."""
    database, _, study = stored
    (first,) = complete(database, study.pet_series_uid)
    with database.session() as session:
        second = jobs.requeue_study(session, study.study_uid, "pet_quant", "a reader's annotation arrived")
        session.get(Job, second).state = JobState.PENDING
    with database.session() as session:
        assert [s.job_id for s in jobs.claim_pending_jobs(session, 4)] == [first]
    with database.session() as session:
        assert jobs.claim_pending_jobs(session, 4) == []  # the first still runs
        jobs.finish_job(session, first, JobState.SUCCEEDED, "version 1")
    with database.session() as session:
        (spec,) = jobs.claim_pending_jobs(session, 4)
        assert spec.job_id == second and session.get(Job, second).reason == "a reader's annotation arrived"
