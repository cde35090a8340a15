"""The validation gate: every SEG and SR must pass dciodvfy with no error and read back with highdicom (with
the segments or measurement groups it was built with) before it may be stored as an output and sent; and it
must be one that viewers can draw: every SEG segment has pixels, every lesion of an SR has a measurement group
with its segment and an image region (OHIF draws and lists a measurement group only by its region; a group
without one makes its SR viewport fail), and nothing else is under "Imaging Measurements".
Reports save their objects through `OutputWriter`, which validates each and deletes every file it wrote
when anything fails: an invalid object is never returned.

pixelmed's TID 1500 validator (DicomSRValidator) takes about half a minute per SR; it runs in the tests, not
here."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from common.states import OutputKind, SegEncoding
from common.types import OutputFile
from pipelines.errors import OutputInvalid

logger = logging.getLogger(__name__)

DCIODVFY_TIMEOUT_S = 120
# dicom3tools in Debian 12 (2022) predates the Label Map Segmentation IOD (2024): for that SOP class it knows no
# IOD to check the modules against. Exactly this message is not an error for it (its other checks stand, and
# highdicom reads the object back whole all the same).
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
PREDATES_LABEL_MAP = ("Error - Information Object Not found",)


def dciodvfy_errors(path: Path, sop_class_uid: str = "") -> list[str]:
    """The error lines dciodvfy (dicom3tools) reports for a file; warnings are not errors."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        raise OutputInvalid("dciodvfy (dicom3tools) is not installed; outputs cannot be validated and are not sent")
    completed = subprocess.run(
        [executable, "-new", str(path)], capture_output=True, timeout=DCIODVFY_TIMEOUT_S, check=False
    )
    # dciodvfy quotes values in the object's own character set (e.g. a Latin-1 "µ"): decoded leniently.
    lines = (completed.stdout + completed.stderr).decode("utf-8", errors="replace").splitlines()
    known = PREDATES_LABEL_MAP if sop_class_uid == LABEL_MAP_SEGMENTATION else ()
    return [line.strip() for line in lines if line.strip().startswith("Error") and line.strip() not in known]


def _validated(path: Path, kind: str, read: Callable[[Path], Dataset]) -> Dataset:
    """The object read back with highdicom, after dciodvfy found no error; OutputInvalid otherwise."""
    sop_class = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)
    errors = dciodvfy_errors(path, sop_class)
    if errors:
        raise OutputInvalid(f"{kind} failed dciodvfy: {'; '.join(errors[:5])}")
    try:
        return read(path)
    except Exception as error:  # highdicom raises several types on malformed objects
        raise OutputInvalid(f"{kind} does not read back with highdicom: {error}") from error


def validate_segmentation(path: Path, expected_segments: int) -> None:
    seg = _validated(path, "SEG", hd.seg.segread)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence if int(s.SegmentNumber) > 0]  # 0: label map background
    if len(numbers) != expected_segments:
        raise OutputInvalid(f"SEG reads back with {len(numbers)} segments, expected {expected_segments}")
    if seg.SegmentationType == "LABELMAP":
        present = set(np.unique(seg.pixel_array).tolist())
    else:  # empty frames are never written: a segment without frames has no pixel
        groups = [*seg.PerFrameFunctionalGroupsSequence, *seg.SharedFunctionalGroupsSequence]  # one segment: shared
        present = {
            int(item.ReferencedSegmentNumber) for g in groups for item in g.get("SegmentIdentificationSequence", [])
        }
    empty = sorted(set(numbers) - present)
    if empty:
        raise OutputInvalid(f"SEG segments without a pixel (listed by viewers, drawing nothing): {empty}")


def validate_report(path: Path, expected_lesions: int) -> None:
    """Read back with highdicom: `expected_lesions` lesions, each with a group holding its segment and a group
    (the same Tracking UID) holding its outline; no other group under "Imaging Measurements"."""
    sr = _validated(path, "SR", hd.sr.srread)
    try:
        volumetric = sr.content.get_volumetric_roi_measurement_groups()
        planar = sr.content.get_planar_roi_measurement_groups()
        others = sr.content.get_image_measurement_groups()
    except Exception as error:
        raise OutputInvalid(f"SR content does not read back with highdicom: {error}") from error
    if others:
        raise OutputInvalid(f"SR has {len(others)} measurement group(s) without an image region (TID 1501)")
    with_segment = {str(g.tracking_uid) for g in volumetric if g.reference_type == codes.DCM.ReferencedSegment}
    with_region = {str(g.tracking_uid) for g in [*volumetric, *planar] if g.reference_type == codes.DCM.ImageRegion}
    if len(with_segment) != expected_lesions:
        raise OutputInvalid(f"SR reads back with {len(with_segment)} segmented lesions, expected {expected_lesions}")
    undrawable = ({str(g.tracking_uid) for g in volumetric} | with_segment) - with_region
    if undrawable:
        raise OutputInvalid(f"SR lesions without an image region (viewers cannot show them): {sorted(undrawable)}")


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
        self,
        dataset: Dataset,
        kind: OutputKind,
        expected: int,
        source_series_uid: str = "",
        supersedes: str = "",
        seg_encodings: tuple[SegEncoding, ...] = (),
    ) -> OutputFile:
        """Save and validate: a SEG must read back with `expected` segments, an SR with `expected` lesions. A
        SEG is sent to the destinations that asked for one of `seg_encodings`."""
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
            seg_encodings=seg_encodings,
        )
