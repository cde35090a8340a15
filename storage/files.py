"""File layout of the storage root. Every path is chosen here, never built from received values.

<root>/incoming/<uuid>.part          being written; removed or renamed, never left behind on success
<root>/objects/<yyyy>/<mm>/<dd>/<uuid>.dcm   received instances
<root>/outputs/<job id>/<uuid>.dcm   SEG and SR produced by jobs
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from storage.errors import OutOfResources


class FileLayout:
    def __init__(self, root: Path, min_free_mb: int = 0) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_mb * 1024 * 1024
        for folder in ("incoming", "objects", "outputs"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def absolute(self, relative: str | Path) -> Path:
        return self.root / relative

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def check_free_space(self, incoming_bytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.min_free_bytes:
            raise OutOfResources(f"only {free // (1024 * 1024)} MB free under {self.root}")

    def new_object_path(self) -> Path:
        today = datetime.now(timezone.utc)
        folder = self.root / "objects" / f"{today:%Y}" / f"{today:%m}" / f"{today:%d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.dcm"

    def new_output_path(self, job_id: int) -> Path:
        folder = self.root / "outputs" / str(int(job_id))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.dcm"

    def write_durably(self, data: bytes, final_path: Path) -> None:
        """Write to a temporary file, fsync it, rename it into place and fsync the folder.

        After this returns the file survives a power cut; on failure no partial file remains."""
        temporary = self.root / "incoming" / f"{uuid.uuid4().hex}.part"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final_path)
            fsync_directory(final_path.parent)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OutOfResources(f"cannot write: {error.strerror}") from error
            raise OutOfResources(f"cannot write {final_path.name}: {error.strerror}") from error

    def remove_stale_partials(self) -> int:
        """Delete leftovers of writes interrupted by a crash (called at start-up)."""
        count = 0
        for partial in (self.root / "incoming").glob("*.part"):
            partial.unlink(missing_ok=True)
            count += 1
        return count


def fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
