"""The file layout's durability choices: which file system the store is on, and when folders are fsynced."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from storage import files
from storage.files import FileLayout, journals_renames, mount_of

# A mount table in the format of /proc/self/mountinfo (proc(5)), written for this test: the root on ext4, a tmpfs
# over /srv/fast, an XFS volume at a mount point with a space (escaped as \040) and an NFS share inside it.
MOUNTINFO = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
35 22 0:31 / /srv/fast rw,nosuid shared:12 - tmpfs tmpfs rw,size=1024k
36 22 253:2 / /srv/pacs\\040store rw,relatime shared:13 - xfs /dev/vdb rw
37 36 0:45 / /srv/pacs\\040store/remote rw,relatime shared:14 - nfs4 server:/export rw,vers=4.2
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return path


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/var/lib/immunode", "ext4"),
        ("/srv/fast", "tmpfs"),
        ("/srv/fast/a/b", "tmpfs"),
        ("/srv/fastest", "ext4"),  # a sibling whose name only begins like the mount point
        ("/srv/pacs store/objects", "xfs"),
        ("/srv/pacs store/remote/objects", "nfs4"),  # the innermost mount
    ],
)
def test_the_file_system_is_the_innermost_mount_that_holds_the_path(mountinfo: Path, where: str, expected: str) -> None:
    assert mount_of(Path(where), mountinfo).file_system == expected


def test_an_unreadable_mount_table_tells_nothing(tmp_path: Path) -> None:
    assert mount_of(tmp_path, tmp_path / "absent") is None


def test_this_process_mount_table_names_the_file_system_of_a_real_folder(tmp_path: Path) -> None:
    assert mount_of(Path("/proc")).file_system == "proc"
    assert mount_of(tmp_path).file_system != ""


def test_journalled_renames_need_the_file_system_and_its_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    device = tmp_path.stat().st_dev
    here = f"{os.major(device)}:{os.minor(device)}"
    table = tmp_path / "mountinfo"
    for kind, on_device, expected in [
        ("ext4", here, True),
        ("xfs", here, True),
        ("btrfs", here, False),
        ("tmpfs", here, False),
        ("nfs4", here, False),
        ("ext4", "999:999", False),  # the table names another device (a bind or stacked mount): not trusted
    ]:
        escaped = str(tmp_path).replace(" ", "\\040")
        table.write_text(f"22 1 {on_device} / {escaped} rw shared:1 - {kind} /dev/x rw\n")
        assert journals_renames(tmp_path, table) is expected, (kind, on_device)
    assert journals_renames(tmp_path, tmp_path / "absent") is False


def _folders_fsynced(monkeypatch: pytest.MonkeyPatch, layout: FileLayout) -> list[Path]:
    synced: list[Path] = []
    monkeypatch.setattr(files, "fsync_directory", synced.append)
    layout.settle([layout.root / "objects"])
    return synced


@pytest.mark.parametrize(
    ("journalled", "setting", "fsynced"),
    [(True, "auto", False), (False, "auto", True), (True, "always", True), (False, "always", True)],
)
def test_folders_are_fsynced_unless_the_file_system_makes_the_rename_durable_with_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, journalled: bool, setting: str, fsynced: bool
) -> None:
    asked: list[Path] = []
    monkeypatch.setattr(files, "journals_renames", lambda path: asked.append(path) or journalled)
    layout = FileLayout(tmp_path / "store", fsync_folders=setting)
    assert _folders_fsynced(monkeypatch, layout) == ([layout.root / "objects"] if fsynced else [])
    assert asked in ([], [layout.root / "objects"])  # decided for the folder received files go to


def test_a_layout_made_without_the_setting_fsyncs_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(files, "journals_renames", lambda _path: True)
    layout = FileLayout(tmp_path / "store")
    assert _folders_fsynced(monkeypatch, layout) == [layout.root / "objects"]


def test_the_node_passes_the_setting_to_its_layout(monkeypatch: pytest.MonkeyPatch, make_settings) -> None:
    from immunode.service import Node

    monkeypatch.setattr(files, "journals_renames", lambda _path: True)
    for setting, settles in (("auto", False), ("always", True)):
        settings = make_settings()
        settings = settings.model_copy(
            update={"storage": settings.storage.model_copy(update={"fsync_folders": setting})}
        )
        node = Node(settings)
        try:
            assert node.layout.settles_folders is settles
        finally:
            node.database.dispose()


def test_a_received_file_is_fsynced_after_its_rename(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fsync that makes the rename durable (on ext4 and XFS) must come after it."""
    layout = FileLayout(tmp_path / "store")
    received = layout.receiving / "r1-x.dcm"
    received.write_bytes(b"data")
    final = layout.new_object_path()
    calls: list[str] = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(files.os, "replace", lambda a, b: (calls.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    layout.adopt(received, final)
    assert calls == ["rename", "fsync"] and final.read_bytes() == b"data"


def test_a_file_copied_across_file_systems_gets_its_folder_fsynced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Across file systems the copy is fsynced before its rename: only the folder's fsync makes the name durable,
    whatever the file system."""
    monkeypatch.setattr(files, "journals_renames", lambda _path: True)
    layout = FileLayout(tmp_path / "store")
    received = layout.receiving / "r1-x.dcm"
    received.write_bytes(b"data")
    final = layout.new_object_path()
    real_replace = os.replace

    def replace(source, target) -> None:
        if Path(source) == received:
            raise OSError(errno.EXDEV, "cross-device link")
        real_replace(source, target)

    synced: list[Path] = []
    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(files, "fsync_directory", synced.append)
    layout.adopt(received, final)
    assert final.read_bytes() == b"data" and not received.exists()
    assert synced == [final.parent]


def test_relative_paths_of_files_the_layout_made_and_of_others(tmp_path: Path) -> None:
    layout = FileLayout(tmp_path / "store")
    made = layout.new_object_path()
    assert layout.relative(made) == str(made.relative_to(layout.root))
    assert layout.relative(layout.root / "objects" / ".." / "outputs" / "x.dcm") == "outputs/x.dcm"
    (tmp_path / "link").symlink_to(layout.root)
    assert layout.relative(tmp_path / "link" / "quarantine" / "q.dcm") == "quarantine/q.dcm"
    with pytest.raises(ValueError):
        layout.relative(tmp_path / "elsewhere.dcm")
