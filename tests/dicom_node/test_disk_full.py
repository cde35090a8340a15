"""A disk that fills up while instances arrive: every instance gets a status (0xA700 Out of Resources for those
the disk or the index refuses), the association goes on, nothing partial is left in incoming/ or objects/, and
each refusal is one clear log line. Real faults: a small tmpfs mounted for the test (root on CI), dcmtk storescu
and pynetdicom as senders; EIO and EDQUOT, which no CI file system produces on demand, are injected at fsync."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage
from sqlalchemy import select

from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Instance
from storage.store import InstanceStore
from tests.conftest import require_tool
from tests.synthetic import write_study


class SmallDisk:
    """A tmpfs of a given size mounted on a folder (unmounted at teardown); `resize` grows or shrinks it."""

    def __init__(self, folder: Path, size_kb: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True)

    def resize(self, size_kb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(self.folder)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted: list[SmallDisk] = []

    def mount(name: str, size_kb: int) -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size_kb)
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        disk.unmount()


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> list[Path]:
    """40 PET instances of 32 KB each (1.3 MB in all)."""
    folder = tmp_path_factory.mktemp("pet")
    return list(write_study(folder, with_ct=False, shape_zyx=(40, 128, 128), lesions=()).pet_files)


@pytest.fixture
def node(make_settings):
    started = []

    def start(root: Path, database_url: str | None = None):
        settings = make_settings(storage={"root": str(root), "min_free_mb": 0}, database_url=database_url)
        database = Database(settings.database_url)
        layout = FileLayout(settings.storage.root)
        layout.run_id = 1
        scp = StorageSCP(
            settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool)
        )
        port, _ = scp.start(port=0)
        started.append((scp, database))
        return port, database, layout

    yield start
    for scp, database in started:
        scp.stop()
        database.dispose()


def _check_store(database: Database, layout: FileLayout) -> set[str]:
    """Every indexed instance is whole on disk; no file in objects/ without its index row; nothing in flight left.
    Returns the SOP Instance UIDs indexed."""
    with database.session() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.path, Instance.sha256)).all()
    for _, path, digest in rows:
        assert hashlib.sha256(layout.absolute(path).read_bytes()).hexdigest() == digest
    assert {layout.relative(p) for p in layout.object_files()} == {path for _, path, _ in rows}
    assert list(layout.receiving.iterdir()) == []
    return {uid for uid, _, _ in rows}


def _send(port: int, files: list[Path]) -> tuple[list[int], bool]:
    """pynetdicom as the sender, one association: the status of each instance, and whether the association was
    still up after the last one."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(PositronEmissionTomographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMMUNODE")
    assert assoc.is_established
    statuses = []
    for path in files:
        answer = assoc.send_c_store(path)
        statuses.append(int(answer.Status) if "Status" in answer else -1)
    established = assoc.is_established
    assoc.release()
    return statuses, established


def test_storescu_gets_a_status_for_every_instance_when_the_disk_fills(
    tmp_path: Path, small_disk, instances, node, caplog
) -> None:
    disk = small_disk("disk", 640)
    port, database, layout = node(disk.folder / "store", f"sqlite:///{tmp_path / 'index.sqlite3'}")
    caplog.set_level(logging.WARNING)
    completed = subprocess.run(  # --no-halt: storescu goes on after a failure status (it stops by default)
        [require_tool("storescu"), "-v", "-nh", "-aet", "STORESCU", "-aec", "IMMUNODE", "127.0.0.1", str(port)]
        + [str(p) for p in instances],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    answers = re.findall(r"Received Store Response \(([^)]*)\)", output)
    assert len(answers) == len(instances), output[-3000:]  # every instance answered, none dropped
    assert set(answers) == {"Success", "Refused: OutOfResources"}, set(answers)
    assert "Releasing Association" in output and "Abort" not in output
    refused = answers.count("Refused: OutOfResources")
    stored = _check_store(database, layout)
    assert len(stored) == answers.count("Success")
    lines = [r.getMessage() for r in caplog.records if "refused with 0xA700" in r.getMessage()]
    assert len(lines) == refused and all("No space left on device" in line for line in lines)


def test_pynetdicom_resends_what_a_full_disk_refused_once_there_is_room(
    tmp_path: Path, small_disk, instances, node
) -> None:
    """The index (SQLite) is on the full disk too: a refusal at commit is answered the same way."""
    disk = small_disk("disk", 768)
    port, database, layout = node(disk.folder / "store", f"sqlite:///{disk.folder / 'index.sqlite3'}")
    statuses, established = _send(port, instances)
    assert established and len(statuses) == len(instances)
    assert set(statuses) == {0x0000, 0xA700}
    assert len(_check_store(database, layout)) == statuses.count(0x0000)
    disk.resize(8192)
    refused = [path for path, status in zip(instances, statuses) if status != 0]
    statuses, established = _send(port, refused)
    assert established and set(statuses) == {0x0000}
    assert len(_check_store(database, layout)) == len(instances)


def test_an_index_on_a_full_disk_answers_out_of_resources(tmp_path: Path, small_disk, instances, node) -> None:
    """Files on a disk with room, the index (SQLite) on one that fills: the commit is refused, the file already
    written is removed, 0xA700."""
    disk = small_disk("index", 1024)
    port, database, layout = node(tmp_path / "store", f"sqlite:///{disk.folder / 'index.sqlite3'}")
    statuses, established = _send(port, instances * 3)
    assert established and len(statuses) == 3 * len(instances)
    assert 0xA700 in statuses and statuses[0] == 0x0000 and set(statuses) <= {0x0000, 0xA700}
    _check_store(database, layout)


@pytest.mark.parametrize("code", [errno.EIO, errno.EDQUOT])
def test_an_io_error_or_a_quota_at_fsync_answers_out_of_resources(
    tmp_path: Path, node, instances, monkeypatch, code
) -> None:
    port, database, layout = node(tmp_path / "store")
    real_fsync = os.fsync
    failing = {"left": 2}

    def fsync(descriptor: int) -> None:
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        # the received data set's file: fsynced in incoming/, or under its name in objects/ after the rename
        received = "/incoming/" in target or ("/objects/" in target and not os.path.isdir(target))
        if failing["left"] and received:
            failing["left"] -= 1
            raise OSError(code, os.strerror(code))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    statuses, established = _send(port, instances[:5])
    assert established and statuses == [0xA700, 0xA700, 0x0000, 0x0000, 0x0000]
    assert len(_check_store(database, layout)) == 3
