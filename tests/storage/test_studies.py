"""Studies: completion once quiet, the jobs routing queues, what a study holds as a job reads it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from common.states import JobState
from storage import studies
from storage.schema import Job, Study, StudyState
from tests.storage.conftest import complete


def test_quiet_study_completes_once_and_queues_its_job(stored) -> None:
    database, layout, study = stored
    with database.session() as session:
        assert studies.quiet_studies(session, timedelta(hours=1)) == []  # not quiet yet
    (job_id,) = complete(database, study.pet_series_uid)
    with database.session() as session:
        assert session.scalar(select(Study.state)) is StudyState.COMPLETE
        assert studies.quiet_studies(session, timedelta(0)) == []
        job = session.get(Job, job_id)
        series = {s.series_instance_uid: s for s in studies.study_series(session, layout, study.study_uid)}
    assert job.series_uids == study.pet_series_uid and job.state is JobState.PENDING
    assert len(series[study.pet_series_uid].files) == 4 and len(series) == 2
