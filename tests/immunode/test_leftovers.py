"""Files in flight belong to the node run that writes them (its run id begins their names): a transfer whose
association ends unanswered leaves nothing; a node killed with kill -9 mid-transfer removes its dead run's files
at its next start, at once (not after an hour); with two nodes on one storage root a starting node leaves its
live sibling's transfer alone, and that transfer completes. Senders stopped in the middle of a data set
(`tests.senders.PausedStore`) make the transfers in flight."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Instance, NodeRun
from storage.store import InstanceStore
from tests.conftest import POSTGRES_URL, free_port, reset_postgres, serve, wait_until
from tests.senders import PausedStore
from tests.synthetic import write_study


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> list[Path]:
    """PET instances of 32 KB: several fragments each, so that a sender can stop in the middle."""
    folder = tmp_path_factory.mktemp("pet")
    return list(write_study(folder, with_ct=False, shape_zyx=(4, 128, 128), lesions=()).pet_files)


def _in_flight(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "incoming").iterdir())


def _run_ids(database_url: str) -> list[int]:
    database = Database(database_url, migrate=False)
    try:
        with database.session() as session:
            return list(session.scalars(select(NodeRun.id).order_by(NodeRun.id)))
    finally:
        database.dispose()


def test_a_transfer_its_sender_abandons_leaves_no_file(tmp_path: Path, make_settings, instances) -> None:
    settings = make_settings()
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    layout.run_id = 7
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start(port=0)
    try:
        finished = PausedStore(port, instances[0])
        abandoned = PausedStore(port, instances[1])
        wait_until(lambda: len(_in_flight(layout.root)) == 2, 10)
        abandoned.abort()
        wait_until(lambda: len(_in_flight(layout.root)) == 1, 10)
        assert _in_flight(layout.root)[0].startswith("r7-rx-")  # named for the run receiving it
        assert finished.finish() == 0x0000
        wait_until(lambda: _in_flight(layout.root) == [], 10)
        with database.session() as session:
            assert session.scalars(select(Instance.sop_instance_uid)).all() == [finished.sop_instance_uid]
    finally:
        scp.stop()
        database.dispose()


def test_a_node_killed_mid_transfer_removes_its_files_at_its_next_start(
    tmp_path: Path, make_settings, instances
) -> None:
    settings = make_settings()
    root = Path(settings.storage.root)
    node = serve(tmp_path, "node", settings)
    try:
        senders = [PausedStore(settings.node.port, path) for path in instances[:2]]
        wait_until(lambda: len(_in_flight(root)) == 2, 10)
        node.kill()  # kill -9: no clean stop, the two transfers in flight
        node.wait(30)
        for sender in senders:
            sender.abort()
        assert len(_in_flight(root)) == 2
        settings = settings.model_copy(update={"node": settings.node.model_copy(update={"port": free_port()})})
        node = serve(tmp_path, "node", settings)  # listening: the start-up has run
        assert _in_flight(root) == []
    finally:
        node.kill()
        node.wait(30)


@pytest.mark.skipif(POSTGRES_URL is None, reason="needs PostgreSQL (IMMUNODE_TEST_DATABASE_URL)")
def test_two_nodes_on_one_root_a_restarted_node_leaves_its_live_sibling_s_transfer_alone(
    tmp_path: Path, make_settings, instances
) -> None:
    reset_postgres(POSTGRES_URL)
    first_settings = make_settings(database_url=POSTGRES_URL)
    second_settings = make_settings(database_url=POSTGRES_URL)  # the same storage root (tmp_path/store)
    root = Path(first_settings.storage.root)
    first = serve(tmp_path, "first", first_settings)
    second = serve(tmp_path, "second", second_settings)
    try:
        first_run, second_run = _run_ids(POSTGRES_URL)
        at_first = PausedStore(first_settings.node.port, instances[0])
        at_second = PausedStore(second_settings.node.port, instances[1])
        wait_until(lambda: len(_in_flight(root)) == 2, 10)
        first.kill()  # kill -9 mid-transfer; the second node goes on receiving
        first.wait(30)
        at_first.abort()
        first_settings = first_settings.model_copy(
            update={"node": first_settings.node.model_copy(update={"port": free_port()})}
        )
        first = serve(tmp_path, "first", first_settings)
        (sibling_file,) = _in_flight(root)  # the dead run's file went at once; the live sibling's stays
        assert sibling_file.startswith(f"r{second_run}-") and not sibling_file.startswith(f"r{first_run}-")
        assert at_second.finish() == 0x0000  # and its transfer completes
        database = Database(POSTGRES_URL, migrate=False)
        try:
            with database.session() as session:
                stored = session.scalars(select(Instance.sop_instance_uid)).all()
        finally:
            database.dispose()
        assert stored == [at_second.sop_instance_uid]
        wait_until(lambda: _in_flight(root) == [], 10)
    finally:
        for process in (first, second):
            process.terminate()
        for process in (first, second):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
