"""Group commit: submitters that arrive while a batch runs share the next one; each gets its own result or error;
the store indexes concurrent instances of one new series once, and an instance that cannot be indexed fails
alone."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicom_node.ingest import parse_received
from storage.database import Database
from storage.errors import IdentityMismatch
from storage.files import FileLayout
from storage.group_commit import GroupCommit
from storage.schema import Instance, Patient, Series, Study
from storage.store import InstanceStore
from storage.types import StoreOutcome
from tests.synthetic import write_study


def test_submitters_during_a_batch_share_the_next_one() -> None:
    first_running, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(items):
        batches.append(list(items))
        if items == [0]:
            first_running.set()
            release.wait(30)
        return [item * 10 for item in items]

    commits = GroupCommit(run)
    results: dict[int, int] = {}
    leader = threading.Thread(target=lambda: results.__setitem__(0, commits.submit(0)))
    leader.start()
    assert first_running.wait(30)
    followers = [threading.Thread(target=lambda n=n: results.__setitem__(n, commits.submit(n))) for n in range(1, 6)]
    for thread in followers:
        thread.start()

    def all_waiting() -> bool:
        with commits._condition:
            return len(commits._pending) == 5

    while not all_waiting():
        threading.Event().wait(0.01)
    release.set()
    for thread in [leader, *followers]:
        thread.join(30)
    assert results == {n: n * 10 for n in range(6)}
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2


def test_each_submitter_gets_its_own_error() -> None:
    commits = GroupCommit(lambda items: [ValueError(item) if item % 2 else item for item in items])
    assert commits.submit(2) == 2
    with pytest.raises(ValueError, match="3"):
        commits.submit(3)


def test_an_exception_out_of_the_batch_reaches_its_submitter() -> None:
    def broken(items):
        raise RuntimeError("index gone")

    with pytest.raises(RuntimeError, match="index gone"):
        GroupCommit(broken).submit(1)


def test_exclusive_work_never_overlaps_a_batch() -> None:
    inside = threading.Event()
    overlap = []

    def run(items):
        overlap.append(inside.is_set())
        return items

    commits = GroupCommit(run)
    with commits.exclusive():
        inside.set()
        thread = threading.Thread(target=commits.submit, args=(1,))
        thread.start()
        thread.join(0.2)
        assert thread.is_alive()  # waits for the exclusive block
        inside.clear()
    thread.join(30)
    assert overlap == [False]


# --- the store ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"), shape_zyx=(12, 24, 24), lesions=())


def _concurrently(function, arguments: list) -> list:
    results: list = [None] * len(arguments)
    start = threading.Barrier(len(arguments))

    def run(number: int) -> None:
        start.wait()
        try:
            results[number] = function(*arguments[number])
        except Exception as error:  # noqa: BLE001 - compared by the test
            results[number] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(arguments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_instances_of_a_new_series_are_indexed_once(tmp_path: Path, database_url: str, study) -> None:
    store = InstanceStore(Database(database_url), FileLayout(tmp_path / "root"))
    files = list(study.pet_files)
    arguments = []
    for path in files:
        data = path.read_bytes()
        arguments.append((parse_received(data), data, "STORESCU"))
    results = _concurrently(store.store, arguments)
    assert all(result.outcome is StoreOutcome.NEW for result in results), results
    with store.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(files)
        assert session.scalar(select(func.count(Series.id))) == 1
        assert session.scalar(select(func.count(Study.id))) == 1
        assert session.scalar(select(func.count(Patient.id))) == 1
    assert store._commits.items == len(files)
    # the same instances again, concurrently: each takes the duplicate path, alone
    again = _concurrently(store.store, arguments)
    assert all(result.outcome is StoreOutcome.DUPLICATE_IDENTICAL for result in again)
    assert len(list((tmp_path / "root" / "objects").rglob("*.dcm"))) == len(files)


def test_a_conflicting_instance_fails_alone_in_its_batch(tmp_path: Path, database_url: str, study) -> None:
    store = InstanceStore(Database(database_url), FileLayout(tmp_path / "root"))
    first = study.pet_files[0].read_bytes()
    store.store(parse_received(first), first, "STORESCU")  # the study's patient is fixed
    arguments = []
    for number, path in enumerate(study.pet_files[1:7]):
        data = path.read_bytes()
        header = parse_received(data)
        if number == 3:  # names another patient for the same study
            header = replace(header, patient_id="SOMEONE-ELSE")
        arguments.append((header, data, "STORESCU"))
    results = _concurrently(store.store, arguments)
    assert isinstance(results[3], IdentityMismatch)
    assert all(r.outcome is StoreOutcome.NEW for n, r in enumerate(results) if n != 3)
    with store.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 6
    assert len(list((tmp_path / "root" / "objects").rglob("*.dcm"))) == 6
