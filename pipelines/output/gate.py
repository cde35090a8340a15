"""The validation gate: every SEG and SR must pass dciodvfy with no error and read back with highdicom (with
the segments or measurement groups it was built with) before it may be stored as an output and sent.
Reports save their objects through `OutputWriter`, which validates each and deletes every file it wrote
when anything fails: an invalid object is never returned."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset

from common.states import OutputKind
from common.types import OutputFile
from pipelines.errors import OutputInvalid

logger = logging.getLogger(__name__)

DCIODVFY_TIMEOUT_S = 120


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (dicom3tools) reports for a file; warnings are not errors."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        raise OutputInvalid("dciodvfy (dicom3tools) is not installed; outputs cannot be validated and are not sent")
    completed = subprocess.run(
        [executable, "-new", str(path)], capture_output=True, timeout=DCIODVFY_TIMEOUT_S, check=False
    )
    # dciodvfy quotes values in the object's own character set (e.g. a Latin-1 "µ"): decoded leniently.
    lines = (completed.stdout + completed.stderr).decode("utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("Error")]


def _validated(path: Path, kind: str, read: Callable[[Path], Dataset]) -> Dataset:
    """The object read back with highdicom, after dciodvfy found no error; OutputInvalid otherwise."""
    errors = dciodvfy_errors(path)
    if errors:
        raise OutputInvalid(f"{kind} failed dciodvfy: {'; '.join(errors[:5])}")
    try:
        return read(path)
    except Exception as error:  # highdicom raises several types on malformed objects
        raise OutputInvalid(f"{kind} does not read back with highdicom: {error}") from error


def validate_segmentation(path: Path, expected_segments: int) -> None:
    seg = _validated(path, "SEG", hd.seg.segread)
    if len(seg.SegmentSequence) != expected_segments:
        raise OutputInvalid(f"SEG reads back with {len(seg.SegmentSequence)} segments, expected {expected_segments}")


def validate_report(path: Path, expected_groups: int) -> None:
    sr = _validated(path, "SR", hd.sr.srread)
    try:
        groups = sr.content.get_volumetric_roi_measurement_groups()
    except Exception as error:
        raise OutputInvalid(f"SR content does not read back with highdicom: {error}") from error
    if len(groups) != expected_groups:
        raise OutputInvalid(f"SR reads back with {len(groups)} measurement groups, expected {expected_groups}")


class OutputWriter:
    """Saves objects at the paths `new_path` gives, each through the gate; used as a context manager, every
    file written is deleted when anything in the block raises (so a report is whole or absent)."""

    def __init__(self, new_path: Callable[[], Path]) -> None:
        self._new_path = new_path
        self.written: list[Path] = []

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        if kind is not None:
            for path in self.written:
                path.unlink(missing_ok=True)

    def save(
        self, dataset: Dataset, kind: OutputKind, expected: int, source_series_uid: str = "", supersedes: str = ""
    ) -> OutputFile:
        """Save and validate: a SEG must read back with `expected` segments, an SR with `expected` lesion groups."""
        path = self._new_path()
        dataset.save_as(path)
        self.written.append(path)
        if kind is OutputKind.SEG:
            validate_segmentation(path, expected)
        else:
            validate_report(path, expected)
        return OutputFile(
            kind=kind,
            path=path,
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            source_series_uid=source_series_uid,
            supersedes_sop_instance_uid=supersedes,
            series_number=int(dataset.SeriesNumber) if dataset.get("SeriesNumber") is not None else None,
        )
