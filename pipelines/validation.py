"""Output gate: every SEG and SR must pass dciodvfy with no error and read back with highdicom before it
may be stored as an output and sent."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import highdicom as hd

from pipelines.errors import OutputInvalid

logger = logging.getLogger(__name__)

DCIODVFY_TIMEOUT_S = 120


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (dicom3tools) reports for a file; warnings are not errors."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        raise OutputInvalid("dciodvfy (dicom3tools) is not installed; outputs cannot be validated and are not sent")
    completed = subprocess.run(
        [executable, "-new", str(path)], capture_output=True, text=True, timeout=DCIODVFY_TIMEOUT_S, check=False
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line.strip() for line in lines if line.strip().startswith("Error")]


def _validated(path: Path, kind: str, read):  # noqa: ANN001, ANN202 - read: highdicom reader for the kind
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
