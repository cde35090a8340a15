"""Versions of a study's results, and who stands behind them (reader in the loop).

Automatic lesions are candidates; a reader's SEG, RTSTRUCT or SR arriving later, or images arriving after the
analysis, make a new version of the results. Each version is a new SEG series and a new SR series whose
Series Numbers are never reused within the study (`SeriesNumbers`); its SR names the SR it supersedes in the
Predecessor Documents Sequence and states the reason (`version_statements`); lesions that persist keep their
tracking UIDs, matched to the previous version's segments by overlap (`prior_lesions`, `match_by_overlap`).

Verification: the SR of a version built from a reader's regions stays UNVERIFIED. VerificationFlag VERIFIED
means the document was attested to by a Verifying Observer (a person, with name and organisation, in the
Verifying Observer Sequence) who is accountable for its content (PS3.3 C.17.2); the reader drew the regions,
but did not attest to this node's measurements. The reader is named as a person observer beside this node as
the device observer (TID 1002 Observer Context, repeated), and the lesions are stated as reader-confirmed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from common.types import ResultVersion
from pipelines.output.numbers import SERIES_NUMBER_STEP
from pipelines.types import SegmentedLesion

logger = logging.getLogger(__name__)

MINIMUM_OVERLAP = 0.3  # of the smaller of two lesions: the same lesion in two versions
VERIFICATION_NOTE = (
    "VerificationFlag UNVERIFIED: the lesions are the reader's, the measurements this node's; no person has "
    "attested to this document (VERIFIED requires a Verifying Observer accountable for its content, PS3.3 "
    "C.17.2), so a reader's regions do not make it verified."
)


@dataclass(frozen=True)
class ReportVersion:
    """What a report writes about its version: the statements (which version, why, what it supersedes, who
    confirmed its lesions), the reader as a person observer, and the Series Numbers of its new series (None:
    the pipeline's own)."""

    statements: tuple[str, ...] = ()
    reader: str = ""
    seg_series_number: int | None = None
    sr_series_number: int | None = None


class SeriesNumbers:
    """Series Numbers for a job's new series: the pipeline's own number, moved on by `SERIES_NUMBER_STEP` past
    every number the study already holds (received series and earlier versions of our results)."""

    def __init__(self, used: Iterable[int] = ()) -> None:
        self._used = set(used)

    def take(self, preferred: int) -> int:
        number = preferred
        while number in self._used:
            number += SERIES_NUMBER_STEP
        self._used.add(number)
        return number


@dataclass(frozen=True)
class ReaderObserver:
    """The person whose annotation defined the lesions of a version, as the annotation names them."""

    name: str  # Person Name as the annotation object gives it ("" when it names nobody)
    source: str  # which object, in words (kind, SOP Instance UID, its label)
    frames: tuple[str, ...] = ()  # the frames of reference it annotates (empty: not stated, e.g. an SR)

    def annotates(self, frame_of_reference_uid: str) -> bool:
        return not self.frames or frame_of_reference_uid in self.frames


def _first(value: object) -> str:
    """The first of a (possibly multi-valued) Person Name, as text within the 64 characters PN allows."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else ""
    return str(value).strip()[:64]


def _person_observer(ds: Dataset) -> str:
    """An SR's Person Observer Name (TID 1003), in the document's observation context."""
    for item in ds.get("ContentSequence", []):
        concept = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "PNAME" and concept and concept[0].CodeValue == "121008":
            return _first(item.PersonName)
    return ""


def reader_observers(paths: Iterable[Path]) -> tuple[ReaderObserver, ...]:
    """Who drew each annotation: a SEG's Content Creator's Name, an SR's Person Observer Name, an RT Structure
    Set's Operators' Name (or Reviewer Name); unreadable objects are left out (the analysis says why)."""
    found = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # the analysis reports unreadable annotations; here they only name nobody
            logger.warning("annotation %s: observer not read: %s", path, error)
            continue
        modality = str(ds.get("Modality", ""))
        name = (
            _first(ds.get("ContentCreatorName"))
            or _person_observer(ds)
            or _first(ds.get("OperatorsName"))
            or _first(ds.get("ReviewerName"))
        )
        label = str(ds.get("ContentLabel", "") or ds.get("StructureSetLabel", "") or ds.get("SeriesDescription", ""))
        source = f"{modality} {ds.get('SOPInstanceUID', '')}" + (f" ({label})" if label else "")
        frames = [str(ds.get("FrameOfReferenceUID", ""))] + [
            str(item.get("FrameOfReferenceUID", "")) for item in ds.get("ReferencedFrameOfReferenceSequence", [])
        ]
        found.append(ReaderObserver(name.strip(), source, tuple(frame for frame in frames if frame)))
    return tuple(found)


def prior_lesions(segmentation_path: Path, sop_instance_uids: Sequence[str]) -> tuple[SegmentedLesion, ...]:
    """The segments of a previous version's SEG (ours) as lesions on the source volume whose slices are
    `sop_instance_uids` (array order): number, label, tracking UID and the mask in its bounding box."""
    seg = hd.seg.segread(segmentation_path)
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    slices = [i for i, uid in enumerate(sop_instance_uids) if uid in referenced]
    if not slices:
        return ()
    found = []
    for description in seg.SegmentSequence:
        number = int(description.SegmentNumber)
        pixels = seg.get_pixels_by_source_instance(
            [sop_instance_uids[i] for i in slices],
            segment_numbers=[number],
            assert_missing_frames_are_empty=True,
            dtype=np.float32,  # a FRACTIONAL SEG (ours by default) reads as occupancy 0..1
        )[..., 0] >= 0.5
        occupied = np.argwhere(pixels)
        if occupied.size == 0:
            continue
        low, high = occupied.min(axis=0), occupied.max(axis=0) + 1
        box = pixels[low[0] : high[0], low[1] : high[1], low[2] : high[2]] > 0
        # Slices of the SEG's sources are in volume order; the box starts at the volume slice of its first one.
        offset = (slices[int(low[0])], int(low[1]), int(low[2]))
        if slices[int(high[0]) - 1] - offset[0] + 1 != box.shape[0]:  # sources with gaps: place slice by slice
            full = np.zeros((slices[int(high[0]) - 1] - offset[0] + 1, *box.shape[1:]), dtype=bool)
            for k in range(box.shape[0]):
                full[slices[int(low[0]) + k] - offset[0]] = box[k]
            box = full
        found.append(
            SegmentedLesion(
                number,
                str(description.get("SegmentLabel", f"Segment {number}")),
                str(description.get("TrackingUID", "")),
                offset,
                box,
            )
        )
    return tuple(found)


def _overlap(a: SegmentedLesion, b: SegmentedLesion) -> int:
    low = [max(x, y) for x, y in zip(a.offset, b.offset)]
    high = [min(x + n, y + m) for x, n, y, m in zip(a.offset, a.mask.shape, b.offset, b.mask.shape)]
    if any(h <= lo for lo, h in zip(low, high)):
        return 0
    window_a = tuple(slice(lo - o, h - o) for lo, h, o in zip(low, high, a.offset))
    window_b = tuple(slice(lo - o, h - o) for lo, h, o in zip(low, high, b.offset))
    return int(np.count_nonzero(a.mask[window_a] & b.mask[window_b]))


@dataclass(frozen=True)
class LesionMatch:
    """A lesion of this version that is a lesion of the previous one (same tracking UID)."""

    number: int  # this version's lesion number
    prior: SegmentedLesion
    dice: float


def match_by_overlap(
    lesions: Sequence[SegmentedLesion], prior: Sequence[SegmentedLesion], minimum: float = MINIMUM_OVERLAP
) -> tuple[LesionMatch, ...]:
    """One-to-one matches, largest overlap first: a pair is the same lesion when their common voxels reach
    `minimum` of the smaller of the two."""
    pairs = []
    for lesion in lesions:
        size = int(np.count_nonzero(lesion.mask))
        for before in prior:
            common = _overlap(lesion, before)
            if common == 0:
                continue
            other = int(np.count_nonzero(before.mask))
            if common >= minimum * min(size, other):
                pairs.append((common / min(size, other), 2 * common / (size + other), lesion.number, before))
    matches, taken_new, taken_prior = [], set(), set()
    for _, dice, number, before in sorted(pairs, key=lambda p: (-p[0], p[2], p[3].number)):
        if number in taken_new or before.number in taken_prior:
            continue
        taken_new.add(number)
        taken_prior.add(before.number)
        matches.append(LesionMatch(number, before, dice))
    return tuple(sorted(matches, key=lambda m: m.number))


def version_statements(
    number: int,
    reason: str,
    previous_sop_instance_uid: str,
    matches: Sequence[LesionMatch] = (),
    prior: Sequence[SegmentedLesion] = (),
    labels: dict[int, str] | None = None,
    readers: Sequence[ReaderObserver] = (),
) -> list[str]:
    """The SR's account of its version: which, why, what it supersedes, which lesions persist (same tracking
    UID), which earlier lesions are withdrawn, and who confirmed them."""
    lines = [f"Report version {number}" + (f": {reason}." if reason else ".")]
    if previous_sop_instance_uid:
        lines.append(
            f"Supersedes the report SR {previous_sop_instance_uid} (Predecessor Documents Sequence): its results are "
            "replaced by the ones of this version."
        )
    if readers:
        who = "; ".join(f"{r.name or 'reader not named in the object'} ({r.source})" for r in readers)
        lines.append(f"Lesions confirmed by the reader: defined by the reader's annotations {who}. {VERIFICATION_NOTE}")
    if prior:
        names = labels or {}
        kept = [f"{names.get(m.number, m.number)} = {m.prior.tracking_identifier} (Dice {m.dice:.2f})" for m in matches]
        matched = {m.prior.number for m in matches}
        withdrawn = [p.tracking_identifier for p in prior if p.number not in matched]
        if kept:
            lines.append("Same lesion as in the previous version, same tracking UID: " + "; ".join(kept) + ".")
        if withdrawn:
            lines.append("Not in this version (withdrawn): " + ", ".join(withdrawn) + ".")
    return lines


def report_version(
    version: ResultVersion,
    previous_sop_instance_uid: str,
    numbers: SeriesNumbers,
    seg_series_number: int | None,
    sr_series_number: int,
    readers: Sequence[ReaderObserver] = (),
    matches: Sequence[LesionMatch] = (),
    prior: Sequence[SegmentedLesion] = (),
    labels: dict[int, str] | None = None,
) -> ReportVersion:
    """A report's version: its statements, the reader who confirmed its lesions (the first one named), and its
    Series Numbers taken from `numbers` (the pipeline's own ones, moved past those the study holds; no SEG
    number when there is no SEG)."""
    statements = version_statements(
        version.number, version.reason, previous_sop_instance_uid, matches, prior, labels, readers
    )
    return ReportVersion(
        tuple(statements),
        next((reader.name for reader in readers if reader.name), ""),
        numbers.take(seg_series_number) if seg_series_number is not None else None,
        numbers.take(sr_series_number),
    )
