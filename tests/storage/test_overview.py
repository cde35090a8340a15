"""The study list of the status snapshot, on studies stored through the receive path: the study attributes kept
at receive time, each pipeline's job, results and deliveries with their next attempt, search (Patient ID and
Accession Number in part, any case, `%` and `_` taken literally), date range, state filter, paging, patient names
only when asked, and the index facts of the health line."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from common.states import JobState
from storage import deliveries, overview
from storage.database import Database
from storage.files import FileLayout
from storage.overview import StudyCondition, StudyQuery
from storage.schema import DeliveryState, StudyState, utcnow
from storage.store import InstanceStore
from tests.storage.conftest import job_with_result, store_study


@pytest.fixture
def listed(tmp_path: Path, database_url: str):
    """Five studies, one in each condition (stored in this order: the last is the newest)."""
    layout = FileLayout(tmp_path / "root")
    database = Database(database_url)
    store = InstanceStore(database, layout)
    made = {}
    for number, (patient, accession, day, description, condition) in enumerate(
        [
            ("PAT_1", "ACC1001", "20260105", "PET-CT whole body", StudyCondition.DONE),
            ("PATX1", "ACC1002", "20260210", "PET-CT <b>restaging</b>", StudyCondition.FAILED),
            ("pat-3", "XYZ2001", "20260301", "CT chest", StudyCondition.ANALYSING),
            ("PAT-4", "XYZ2002", "20260315", "PET-CT", StudyCondition.DELIVERING),
            ("PAT-5", "", "", "", StudyCondition.RECEIVING),
        ]
    ):
        attributes = {"AccessionNumber": accession, "StudyDate": day, "StudyDescription": description}
        attributes["PatientName"] = "Müller^Jürgen" if number == 0 else f"Doe^Patient{number}"
        if number == 0:
            attributes["SpecificCharacterSet"] = "ISO_IR 192"
        study_uid, _ = store_study(store, tmp_path / f"s{number}", patient, **attributes)
        made[condition] = study_uid
    job_with_result(database, layout, made[StudyCondition.DONE], JobState.SUCCEEDED, ["pacs"])
    job_with_result(database, layout, made[StudyCondition.FAILED], JobState.FAILED)
    job_with_result(database, layout, made[StudyCondition.ANALYSING], JobState.PENDING)
    job_with_result(database, layout, made[StudyCondition.DELIVERING], JobState.SUCCEEDED, ["pacs"])
    now = utcnow()
    with database.session() as session:
        due = deliveries.due_deliveries(session, layout, now + timedelta(seconds=1))["pacs"]
        first, second = sorted(due, key=lambda d: d.delivery_id)  # DONE's, then DELIVERING's
        deliveries.record_delivery_attempt(session, first.delivery_id, True, "", 3, now)
        deliveries.record_delivery_attempt(session, second.delivery_id, False, "refused", 3, now + timedelta(hours=1))
    yield database, made, now
    database.dispose()


def _uids(page: overview.StudyPage) -> list[str]:
    return [row.study_instance_uid for row in page.rows]


def test_the_list_shows_each_study_with_its_jobs_results_and_deliveries(listed) -> None:
    database, made, now = listed
    with database.session() as session:
        page = overview.study_page(session, StudyQuery())
    assert page.total == 5 and page.pages == 1
    assert sorted(_uids(page)) == sorted(made.values())
    by_uid = {row.study_instance_uid: row for row in page.rows}
    assert {c: by_uid[uid].condition for c, uid in made.items()} == {c: c for c in made}
    done = by_uid[made[StudyCondition.DONE]]
    assert (done.patient_id, done.accession_number, done.study_date) == ("PAT_1", "ACC1001", date(2026, 1, 5))
    assert (done.description, done.modalities, done.instances, done.state) == (
        "PET-CT whole body",
        ("PT",),
        2,
        StudyState.COMPLETE,
    )
    assert done.patient_name is None  # not asked for
    (job,) = done.jobs
    assert (job.pipeline, job.state, job.summary) == ("pet_quant", JobState.SUCCEEDED, "1 lesion")
    assert [r.kind.value for r in done.results] == ["SR"]
    (sent,) = done.deliveries
    assert (sent.destination, sent.state, sent.next_attempt_at) == ("pacs", DeliveryState.SENT, None)
    (waiting,) = by_uid[made[StudyCondition.DELIVERING]].deliveries
    assert waiting.state is DeliveryState.PENDING and waiting.last_error == "refused"
    assert abs((waiting.next_attempt_at - (now + timedelta(hours=1))).total_seconds()) < 1
    failed = by_uid[made[StudyCondition.FAILED]]
    assert failed.jobs[0].error == "no PET series" and failed.description == "PET-CT <b>restaging</b>"
    receiving = by_uid[made[StudyCondition.RECEIVING]]
    assert (receiving.study_date, receiving.accession_number, receiving.jobs) == (None, "", ())
    with database.session() as session:
        named = overview.study_page(session, StudyQuery(), with_patient_names=True)
    names = {row.study_instance_uid: row.patient_name for row in named.rows}
    assert names[made[StudyCondition.DONE]] == "Müller^Jürgen"  # decoded in its character set (UTF-8)


def test_search_filters_and_paging(listed) -> None:
    database, made, _ = listed

    def found(**query) -> list[str]:
        with database.session() as session:
            return sorted(_uids(overview.study_page(session, StudyQuery(**query))))

    assert found(patient_id="pat-") == sorted(
        [made[StudyCondition.ANALYSING], made[StudyCondition.DELIVERING], made[StudyCondition.RECEIVING]]
    )
    assert found(patient_id="PAT_") == [made[StudyCondition.DONE]]  # "_" is a character, not a wildcard
    assert found(patient_id="%") == []
    assert found(accession_number="acc") == sorted([made[StudyCondition.DONE], made[StudyCondition.FAILED]])
    assert found(date_from=date(2026, 2, 1), date_to=date(2026, 3, 1)) == sorted(
        [made[StudyCondition.FAILED], made[StudyCondition.ANALYSING]]
    )
    assert found(date_to=date(2026, 12, 31)) == sorted(made[c] for c in made if c is not StudyCondition.RECEIVING)
    for condition, uid in made.items():
        assert found(condition=condition) == [uid], condition
    with database.session() as session:
        pages = [overview.study_page(session, StudyQuery(page=n, page_size=2)) for n in (1, 2, 3)]
    assert [p.pages for p in pages] == [3, 3, 3] and [len(p.rows) for p in pages] == [2, 2, 1]
    listed_in_order = [uid for p in pages for uid in _uids(p)]
    assert listed_in_order[0] == made[StudyCondition.RECEIVING]  # the last received first
    assert sorted(listed_in_order) == sorted(made.values())
    with pytest.raises(ValueError):
        StudyQuery(page_size=1000)


def test_index_facts_for_the_health_line(listed) -> None:
    database, made, now = listed
    with database.session() as session:
        facts = overview.index_facts(session, utcnow())
    assert (facts.studies, facts.receiving, facts.queue_depth, facts.running) == (5, 1, 1, 0)
    assert (facts.failed_recently, facts.dead_letters, facts.pending_deliveries) == (1, 0, 1)
    assert abs((facts.next_delivery_at - (now + timedelta(hours=1))).total_seconds()) < 1
    assert facts.last_received_at is not None and facts.last_received_at <= utcnow()
