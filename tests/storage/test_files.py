"""The file layout's durability choices: which file system the store is on, and when folders are fsynced."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import files
from storage.files import FileLayout, file_system_type

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
    assert file_system_type(Path(where), mountinfo) == expected


def test_an_unreadable_mount_table_tells_nothing(tmp_path: Path) -> None:
    assert file_system_type(tmp_path, tmp_path / "absent") == ""


def test_this_process_mount_table_names_the_file_system_of_a_real_folder(tmp_path: Path) -> None:
    assert file_system_type(Path("/proc")) == "proc"
    assert file_system_type(tmp_path) != ""


def _folders_fsynced(monkeypatch: pytest.MonkeyPatch, layout: FileLayout) -> list[Path]:
    synced: list[Path] = []
    monkeypatch.setattr(files, "fsync_directory", synced.append)
    layout.settle([layout.root / "objects"])
    return synced


@pytest.mark.parametrize(
    ("file_system", "setting", "fsynced"),
    [
        ("ext4", "auto", False),  # the file's fsync committed its rename
        ("xfs", "auto", False),
        ("btrfs", "auto", False),
        ("tmpfs", "auto", True),
        ("nfs4", "auto", True),
        ("", "auto", True),  # not known: fsynced
        ("ext4", "always", True),
    ],
)
def test_folders_are_fsynced_unless_the_file_system_journals_the_rename_with_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, file_system: str, setting: str, fsynced: bool
) -> None:
    monkeypatch.setattr(files, "file_system_type", lambda _path: file_system)
    layout = FileLayout(tmp_path / "store", fsync_folders=setting)
    assert layout.file_system == file_system
    assert _folders_fsynced(monkeypatch, layout) == ([layout.root / "objects"] if fsynced else [])


def test_a_layout_made_without_the_setting_fsyncs_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(files, "file_system_type", lambda _path: "ext4")
    layout = FileLayout(tmp_path / "store")
    assert _folders_fsynced(monkeypatch, layout) == [layout.root / "objects"]


def test_relative_paths_of_files_the_layout_made_and_of_others(tmp_path: Path) -> None:
    layout = FileLayout(tmp_path / "store")
    made = layout.new_object_path()
    assert layout.relative(made) == str(made.relative_to(layout.root))
    assert layout.relative(layout.root / "objects" / ".." / "outputs" / "x.dcm") == "outputs/x.dcm"
    (tmp_path / "link").symlink_to(layout.root)
    assert layout.relative(tmp_path / "link" / "quarantine" / "q.dcm") == "quarantine/q.dcm"
    with pytest.raises(ValueError):
        layout.relative(tmp_path / "elsewhere.dcm")
