"""File layout of the storage root. Every path is chosen here, never built from received values.

<root>/incoming/r<run>-<uuid>.part   being written; removed or renamed, never left behind on success
<root>/incoming/r<run>-rx*.dcm       data sets the network is receiving (moved into objects/ once stored)
<root>/objects/<yyyy>/<mm>/<dd>/<uuid>.dcm   received instances (the day is the day of receipt, UTC)
<root>/outputs/<job id>/<uuid>.dcm   SEG and SR produced by jobs
<root>/quarantine/<uuid>.dcm         files found without an index row that could not be indexed
<root>/spool/records.jsonl           audit records and refusals written while the index was unavailable
<root>/purging/<uuid>/               a study's files while retention deletes its rows (storage.retention)

Files in flight (incoming/) carry the node run that writes them (`r<run id>-`, storage.runs): several nodes may
share one root, and a starting node removes the leftovers of runs that are not alive (its own earlier runs killed
or crashed, a dead sibling's) at once, never a live sibling's (`remove_leftovers`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import date, datetime, timezone
from pathlib import Path

from storage.errors import OutOfResources

FOLDERS = ("incoming", "objects", "outputs", "quarantine", "spool", "purging")
IN_FLIGHT_RUN = re.compile(r"^r(\d+)-")  # the run id an in-flight file's name starts with
UNOWNED_MAX_AGE_S = 3600.0  # in-flight files named without a run (older versions): removed after this long unwritten
# File systems whose fsync of a file also makes durable the rename that gave the file its name (fsync, not fdatasync):
# - ext4 with a journal: the rename changes the file's inode (its ctime) in the running jbd2 transaction, and the
#   fsync waits for the commit of the inode's last change, which holds the rename;
# - ext4 without one: the new name's ext4_add_entry marks the inode EXT4_STATE_NEWENTRY, and the no-journal fsync
#   then writes its new parent folder too (ext4_sync_parent, fs/ext4/fsync.c);
# - XFS: the rename is logged with the inode, and the fsync forces the log up to the inode's last change.
# There the folder's fsync after the file's finds nothing to write and costs one more device cache flush. btrfs is
# left out (its log tree had rename-then-fsync bugs in older kernels), and so is every other file system.
JOURNALLED_RENAMES = frozenset({"ext4", "xfs"})


class FileLayout:
    def __init__(
        self, root: Path, min_free_mb: int = 0, private: bool = False, fsync_folders: str = "always"
    ) -> None:
        self.root = Path(root).resolve()
        self._root_prefix = f"{self.root}{os.sep}"
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.run_id: int | None = None  # the node run whose files in flight this layout writes (set at start)
        self._day_folders: dict[date, Path] = {}
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        # `settle` fsyncs folders unless configured "auto" on a file system that journals renames with the file.
        self.settles_folders = fsync_folders == "always" or not journals_renames(self.root / "objects")
        if private:
            # Readable by the service user only, whatever the folder's mode was when it was made.
            os.chmod(self.root, 0o700)

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def purging(self) -> Path:
        return self.root / "purging"

    def absolute(self, relative: str | Path) -> Path:
        return self.root / relative

    def relative(self, path: Path) -> str:
        text = str(path)
        if text.startswith(self._root_prefix):
            inside = text[len(self._root_prefix) :]
            if "/." not in inside and "//" not in inside and not inside.startswith("."):
                return inside  # a path this layout made (the common case, without pathlib)
        path = Path(path)
        if path.is_absolute() and ".." not in path.parts and path.is_relative_to(self.root):
            return str(path.relative_to(self.root))  # a path this layout made: no symbolic links to resolve
        return str(path.resolve().relative_to(self.root))

    def check_free_space(self, incoming_bytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.min_free_bytes:
            raise OutOfResources(f"only {free // (1024 * 1024)} MB free under {self.root}")

    def new_object_path(self) -> Path:
        today = datetime.now(timezone.utc).date()
        folder = self._day_folders.get(today)
        if folder is None:
            folder = self.root / "objects" / f"{today:%Y}" / f"{today:%m}" / f"{today:%d}"
            folder.mkdir(parents=True, exist_ok=True)
            self._day_folders = {today: folder}  # made once a day, not once an instance
        return folder / f"{uuid.uuid4().hex}.dcm"

    def new_output_path(self, job_id: int) -> Path:
        folder = self.root / "outputs" / str(int(job_id))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.dcm"

    def write_durably(self, data: bytes, final_path: Path) -> None:
        """Write to a temporary file, fsync it, rename it into place and fsync the folder.

        After this returns the file survives a power cut; on failure no partial file remains."""

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

        self._durably(write, final_path)

    def _durably(self, write: Callable[[Path], None], final_path: Path, sync_folder: bool = True) -> None:
        """`write` a temporary file in incoming/, rename it to `final_path`, fsync the folder (unless the caller
        does that itself, `settle`); OSError becomes OutOfResources and leaves neither the temporary file nor
        `final_path` behind."""
        temporary = self.root / "incoming" / f"{self.in_flight_prefix}{uuid.uuid4().hex}.part"
        try:
            write(temporary)
            os.replace(temporary, final_path)
            if sync_folder:
                fsync_directory(final_path.parent)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            final_path.unlink(missing_ok=True)
            raise _out_of_resources(error, final_path) from error

    def settle(self, folders: Iterable[Path]) -> None:
        """fsync folders that files were renamed into (`adopt`): the names are durable once this returns. Nothing
        to do where the file's own fsync made its name durable (`settles_folders` false, see `JOURNALLED_RENAMES`)."""
        if not self.settles_folders:
            return
        for folder in folders:
            try:
                fsync_directory(folder)
            except OSError as error:
                raise _out_of_resources(error, folder) from error

    @property
    def in_flight_prefix(self) -> str:
        """How the names of this run's files in incoming/ begin."""
        return f"r{self.run_id}-" if self.run_id is not None else ""

    @property
    def receiving(self) -> Path:
        """Where the network writes data sets as they arrive (on the store's file system, so that a complete
        one is moved into objects/, not copied)."""
        return self.root / "incoming"

    def adopt_durably(self, received: Path, final_path: Path) -> None:
        """Move a file received to disk into place durably: fsync it and rename it (a streamed copy when the two
        folders are on different file systems), fsync the folder. On failure nothing is left at `final_path`."""
        self.adopt(received, final_path, sync_folder=True)

    def adopt(self, received: Path, final_path: Path, sync_folder: bool = False) -> None:
        """`adopt_durably` without the folder's fsync, which the caller does with `settle` (once for many files,
        after their index rows are committed).

        The file is renamed first and fsynced under its new name: on journalling file systems (ext4, XFS) that
        one fsync's journal commit makes the data and the name durable together, and the folder's fsync after
        it finds nothing left to write (one device flush per file instead of two). A crash before the fsync
        returns leaves at most a partial file without an index row (never acknowledged), which start-up
        reconciliation finds invalid and quarantines (`immunode.reconcile`)."""
        try:
            os.replace(received, final_path)  # same file system: a rename, no copy
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise _out_of_resources(error, final_path) from error
        else:
            try:
                descriptor = os.open(final_path, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                if sync_folder:
                    fsync_directory(final_path.parent)
            except OSError as error:
                final_path.unlink(missing_ok=True)
                raise _out_of_resources(error, final_path) from error
            return

        def copy(temporary: Path) -> None:
            with open(received, "rb") as source, open(temporary, "wb") as target:
                shutil.copyfileobj(source, target, 1024 * 1024)
                target.flush()
                os.fsync(target.fileno())

        self._durably(copy, final_path, True)  # fsynced before its rename: the folder's fsync is needed
        received.unlink(missing_ok=True)

    def object_files(self, since: date | None = None) -> Iterator[Path]:
        """Files under objects/, in day folders from `since` on (all when None)."""
        for year in sorted((self.root / "objects").iterdir()):
            for month in sorted(year.iterdir()) if year.is_dir() else ():
                for day in sorted(month.iterdir()) if month.is_dir() else ():
                    try:
                        folder_date = date(int(year.name), int(month.name), int(day.name))
                    except ValueError:
                        folder_date = None  # not a folder of ours: scanned in a full scan only
                    if since is not None and (folder_date is None or folder_date < since):
                        continue
                    yield from (p for p in day.iterdir() if p.is_file() and p.suffix == ".dcm")

    def quarantine(self, path: Path) -> Path:
        """Move a file into quarantine/ under a new name; returns where it went."""
        target = self.root / "quarantine" / f"{uuid.uuid4().hex}.dcm"
        os.replace(path, target)
        fsync_directory(target.parent)
        fsync_directory(path.parent)
        return target

    def remove_leftovers(self, live_runs: Collection[int], unowned_max_age_s: float = UNOWNED_MAX_AGE_S) -> int:
        """Delete the files in flight (incoming/) of node runs not in `live_runs`: writes and receptions a crash or
        kill -9 interrupted, whatever their age; a live run's (this one's, a sibling node's on the same root) are
        left alone. Files named without a run are removed once not written to for `unowned_max_age_s`."""
        count = 0
        cutoff = time.time() - unowned_max_age_s
        for path in (self.root / "incoming").iterdir():
            if not path.is_file():
                continue
            owner = IN_FLIGHT_RUN.match(path.name)
            try:
                if owner is not None and int(owner.group(1)) in live_runs:
                    continue
                if owner is None and path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:  # finished or removed meanwhile
                continue
            count += 1
        return count


def _out_of_resources(error: OSError, path: Path) -> OutOfResources:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutOfResources(f"cannot write: {error.strerror}")
    return OutOfResources(f"cannot write {path.name}: {error.strerror}")


@dataclass(frozen=True)
class Mount:
    """The mount a path is on, as this process's mount table (proc(5) mountinfo) gives it."""

    point: bytes
    device: str  # "major:minor"
    file_system: str  # "ext4", "xfs", "tmpfs", "nfs4", "overlay", ...


_OCTAL = re.compile(rb"\\([0-7]{3})")


def mount_of(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> Mount | None:
    """The innermost mount that holds the resolved `path` (compared as bytes, the table's octal escapes decoded),
    or None where the table cannot be read."""
    target = os.fsencode(Path(path).resolve())
    best: Mount | None = None
    try:
        with open(mountinfo, "rb") as table:
            for line in table:
                before, _, after = line.partition(b" - ")
                fields = before.split()
                if len(fields) < 5 or not after.split():
                    continue
                point = _OCTAL.sub(lambda match: bytes([int(match.group(1), 8)]), fields[4])
                inside = target == point or target.startswith(point.rstrip(b"/") + b"/")
                if inside and (best is None or len(point) >= len(best.point)):  # a later mount over a point shadows
                    device, kind = fields[2].decode("ascii", "replace"), after.split()[0].decode("ascii", "replace")
                    best = Mount(point, device, kind)
    except OSError:
        return None
    return best


def journals_renames(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether a file's fsync on `path`'s file system also makes durable the rename that gave it its name
    (`JOURNALLED_RENAMES`); only when the mount table's device is the one `path` is on (a bind mount or a stacked
    mount could otherwise name another). False wherever this cannot be told."""
    mount = mount_of(path, mountinfo)
    if mount is None or mount.file_system not in JOURNALLED_RENAMES:
        return False
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    return mount.device == f"{os.major(device)}:{os.minor(device)}"


def fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
