"""DICOM SEG building blocks: one segment per lesion (any pipeline's lesion: a bool mask box on the source
grid, a number, a tracking identifier and UID), written in each encoding the result destinations asked for
(`common.states.SegEncoding`), each segment coloured by its lesion's tracking UID; and the SR content that
ties a lesion's measurement group to its segment and to its outline on the source images.

What viewers need (docs/conformance-outputs.md): OHIF and the dcmjs-based viewers mis-decode 1-bit frames
whose pixel count is not a multiple of 8, hence FRACTIONAL (8 bits) by default; a segment without pixels is
listed and draws nothing, hence none is ever written; OHIF draws a measurement group only when it (or a group
with the same Tracking UID) has an image region, and TID 1411 allows a group either a segment or regions,
hence each lesion has two groups sharing its Tracking UID: its measurements with its segment, and its outline.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from skimage import measure

from common.states import OutputKind, SegEncoding
from common.types import OutputFile
from common.version import __version__
from pipelines.output.gate import OutputWriter
from pipelines.output.numbers import SEG_ENCODING_OFFSET
from pipelines.output.sources import conform_copied_attributes
from pipelines.output.sr import MANUFACTURER, new_instance
from pipelines.types import AlgorithmIdentity, SegmentedLesion

DESCRIPTION_SUFFIX = {SegEncoding.FRACTIONAL: "", SegEncoding.LABELMAP: " - label map", SegEncoding.BINARY: " - binary"}
SEGMENTATION_TYPE = {
    SegEncoding.FRACTIONAL: hd.seg.SegmentationTypeValues.FRACTIONAL,
    SegEncoding.LABELMAP: hd.seg.SegmentationTypeValues.LABELMAP,
    SegEncoding.BINARY: hd.seg.SegmentationTypeValues.BINARY,
}


def segment_colour(tracking_uid: str) -> hd.color.CIELabColor:
    """A saturated colour fixed by the lesion's tracking UID: the same lesion has the same colour in every
    SEG and at every time point (a hue from the UID's hash, full brightness)."""
    hue = int.from_bytes(hashlib.sha256(tracking_uid.encode()).digest()[:4], "big") / 2**32
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return hd.color.CIELabColor.from_rgb(red * 255, green * 255, blue * 255)


def label_volume(lesions: Sequence[SegmentedLesion], shape: tuple[int, ...]) -> np.ndarray:
    """One array holding each lesion's number on its voxels (for lesions that do not overlap)."""
    labels = np.zeros(shape, dtype=np.uint8 if max((x.number for x in lesions), default=0) < 256 else np.uint16)
    for lesion in lesions:
        labels[lesion.box()][lesion.mask] = lesion.number
    return labels


def _stacked(lesions: Sequence[SegmentedLesion], shape: tuple[int, ...]) -> np.ndarray:
    """One binary mask per segment (segment numbers 1..n in order): overlapping lesions keep all their voxels."""
    stack = np.zeros((*shape, len(lesions)), dtype=np.uint8)
    for index, lesion in enumerate(lesions):
        stack[(*lesion.box(), index)] = lesion.mask
    return stack


def _overlap(lesions: Sequence[SegmentedLesion], shape: tuple[int, ...]) -> bool:
    count = np.zeros(shape, dtype=np.uint16)
    for lesion in lesions:
        count[lesion.box()] += lesion.mask
    return bool((count > 1).any())


def _seg_algorithm(identity: AlgorithmIdentity) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=identity.name,
        family=codes.DCM.ImageProcessing,
        version=identity.version,
        source=MANUFACTURER,
        parameters={"parameters_sha256": identity.parameters_sha256, "use": "research only"},
    )


def build_segmentation(
    source_images: Sequence[Dataset],
    lesions: Sequence[SegmentedLesion],
    identity: AlgorithmIdentity,
    content_description: str,
    series_description: str,
    series_number: int,
    algorithm_type: hd.seg.SegmentAlgorithmTypeValues = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    encoding: SegEncoding = SegEncoding.FRACTIONAL,
) -> hd.seg.Segmentation:
    """The lesions' SEG in one encoding; segments numbered 1..n as the lesions are (their SR references).
    `algorithm_type`: AUTOMATIC for candidates the node found, SEMIAUTOMATIC for lesions a reader's region or
    mark defined and the method delineated."""
    numbers = [lesion.number for lesion in lesions]
    if numbers != list(range(1, len(lesions) + 1)):
        raise ValueError(f"lesions must be numbered 1..n in order for their segments, got {numbers}")
    empty = [lesion.tracking_identifier for lesion in lesions if not lesion.mask.any()]
    if empty:
        raise ValueError(f"lesions without a voxel cannot be segments: {', '.join(empty)}")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=lesion.number,
            segment_label=lesion.tracking_identifier,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=algorithm_type,
            algorithm_identification=_seg_algorithm(identity),
            tracking_uid=lesion.tracking_uid,
            tracking_id=lesion.tracking_identifier,
            display_color=segment_colour(lesion.tracking_uid),
        )
        for lesion in lesions
    ]
    shape = (len(source_images), int(source_images[0].Rows), int(source_images[0].Columns))
    if encoding is SegEncoding.LABELMAP or not _overlap(lesions, shape):
        pixel_array = label_volume(lesions, shape)  # a label map cannot hold overlaps: write_segmentations
    else:
        pixel_array = _stacked(lesions, shape)
    segmentation = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixel_array,
        segmentation_type=SEGMENTATION_TYPE[encoding],
        segment_descriptions=descriptions,
        **new_instance(series_number),
        manufacturer_model_name=identity.name,
        software_versions=__version__,
        device_serial_number="1",
        content_description=content_description,
        content_label="LESIONS",
        series_description=series_description,
        # FRACTIONAL: the mask, as 0 or 255 (occupancy 0 or 1 of each pixel).
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
    )
    if encoding is SegEncoding.LABELMAP:
        # highdicom describes the background as segment 0; the standard does not ask for it (pixel value 0 is
        # no segment) and OHIF 3.13 then gives every segment the colour of the one before it (black first).
        segmentation.SegmentSequence = [s for s in segmentation.SegmentSequence if s.SegmentNumber != 0]
    conform_copied_attributes(segmentation)
    return segmentation


@dataclass(frozen=True)
class Segmentations:
    """A report's SEGs: one per encoding written, the first (in SegEncoding's order) the one its SR
    references; the SR lists them all as evidence."""

    written: tuple[hd.seg.Segmentation, ...]
    files: tuple[OutputFile, ...]

    @property
    def referenced(self) -> hd.seg.Segmentation:
        return self.written[0]


def encodings_written(
    lesions: Sequence[SegmentedLesion], shape: tuple[int, ...], asked: Sequence[SegEncoding]
) -> Mapping[SegEncoding, tuple[SegEncoding, ...]]:
    """Encoding written -> the encodings asked for that it serves. Overlapping lesions cannot share a label map:
    those who asked for one get the FRACTIONAL SEG (all segments whole) instead."""
    asked = [e for e in SegEncoding if e in set(asked)] or [SegEncoding.FRACTIONAL]
    plan: dict[SegEncoding, list[SegEncoding]] = {}
    overlap = SegEncoding.LABELMAP in asked and _overlap(lesions, shape)
    for encoding in asked:
        written = SegEncoding.FRACTIONAL if encoding is SegEncoding.LABELMAP and overlap else encoding
        plan.setdefault(written, []).append(encoding)
    return {e: tuple(plan[e]) for e in SegEncoding if e in plan}


def write_segmentations(
    writer: OutputWriter,
    source_images: Sequence[Dataset],
    lesions: Sequence[SegmentedLesion],
    identity: AlgorithmIdentity,
    content_description: str,
    series_description: str,
    series_number: int,
    encodings: Sequence[SegEncoding],
    source_series_uid: str,
    algorithm_type: hd.seg.SegmentAlgorithmTypeValues = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
) -> Segmentations:
    """The lesions' SEG in each encoding asked for, each through the validation gate."""
    shape = (len(source_images), int(source_images[0].Rows), int(source_images[0].Columns))
    written, files = [], []
    for encoding, serves in encodings_written(lesions, shape, encodings).items():
        segmentation = build_segmentation(
            source_images,
            lesions,
            identity,
            content_description,
            series_description + DESCRIPTION_SUFFIX[encoding],
            series_number + SEG_ENCODING_OFFSET[encoding],  # each encoding a series of its own
            algorithm_type,
            encoding,
        )
        written.append(segmentation)
        files.append(writer.save(segmentation, OutputKind.SEG, len(lesions), source_series_uid, seg_encodings=serves))
    return Segmentations(tuple(written), tuple(files))


def referenced_segment(
    lesion: SegmentedLesion, segmentation: hd.seg.Segmentation, source_images: Sequence[Dataset]
) -> hd.sr.ReferencedSegment:
    # Built explicitly: highdicom's ReferencedSegment.from_segmentation fails on a single-segment SEG,
    # whose segment identification sits in the shared, not per-frame, functional groups.
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(segmentation.SOPClassUID),
        sop_instance_uid=str(segmentation.SOPInstanceUID),
        segment_number=lesion.number,
        source_images=[hd.sr.SourceImageForSegmentation.from_source_image(source_images[i]) for i in _slices(lesion)],
    )


def _slices(lesion: SegmentedLesion) -> list[int]:
    return [lesion.offset[0] + int(i) for i in np.flatnonzero(lesion.mask.any(axis=(1, 2)))]


def lesion_regions(lesion: SegmentedLesion, source_images: Sequence[Dataset]) -> list[hd.sr.ImageRegion]:
    """The lesion's outline on each source image it lies on: one closed polyline per connected region (and
    hole), through the pixel edges between the lesion's pixels and the others, in image pixel coordinates
    (SCOORD: 0,0 is the top left corner of the first pixel). The slice of its largest cross-section comes
    first: viewers that draw one region per lesion (OHIF) show that one."""
    by_slice = []
    for index in _slices(lesion):
        plane = np.pad(lesion.mask[index - lesion.offset[0]], 1)
        outlines = []
        for contour in measure.find_contours(plane.astype(np.uint8), 0.5):
            contour = measure.approximate_polygon(contour, tolerance=0.01)
            rows = contour[:, 0] - 1 + lesion.offset[1] + 0.5
            columns = contour[:, 1] - 1 + lesion.offset[2] + 0.5
            outlines.append(np.column_stack([columns, rows]).astype(np.float32))
        by_slice.append((int(plane.sum()), index, outlines))
    largest = max(by_slice, key=lambda item: item[0])[1]
    by_slice.sort(key=lambda item: (item[1] != largest, item[1]))
    return [
        hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=hd.sr.SourceImageForRegion.from_source_image(source_images[index]),
        )
        for _, index, outlines in by_slice
        for outline in outlines
    ]


def lesion_groups(
    lesion: SegmentedLesion,
    segmentation: hd.seg.Segmentation,
    source_images: Sequence[Dataset],
    **content: Any,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """A lesion's two TID 1411 groups, one Tracking UID: its measurements and evaluations (`content`: finding
    type and sites, algorithm, time point, measurements...) with its segment, then its outline per slice
    (TID 1411 allows a group a segment or image regions, not both; viewers join groups by Tracking UID)."""
    tracking = hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_identifier)
    # Not the time point context: viewers joining the groups would show its "Time Point Order" twice.
    described = {k: content[k] for k in ("finding_type", "finding_sites", "algorithm_id") if k in content}
    return [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=referenced_segment(lesion, segmentation, source_images),
            **content,
        ),
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_regions=lesion_regions(lesion, source_images), **described
        ),
    ]
