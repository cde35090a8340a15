"""Reader annotations sent by the PACS, turned into lesion seeds for the semi-automatic mode of the PET
immune-profiling method (lesions identified by a reader, then segmented automatically).

One seed per annotated region, in patient coordinates: the centroid of an RTSTRUCT ROI's contour points,
of a DICOM SEG segment's voxels, or of a TID 1500 SR region or point (3D coordinates, or 2D coordinates on
an image of the same study). Only annotations in the PET's frame of reference are used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage, SegmentationStorage

from pipelines.types import ReaderSeed

logger = logging.getLogger(__name__)

SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
}
ANNOTATION_CLASSES = {str(SegmentationStorage), str(RTStructureSetStorage)} | SR_CLASSES
# Images an SR annotation's 2D coordinates can point at.
IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image
}
LYMPH_NODE_CODE = "59441001"  # SCT Lymph node
LYMPH_NODE_LABEL = re.compile(r"(lymph|\bnode|\bLN\b)", re.IGNORECASE)


def _seed(position: np.ndarray, lymph_node: bool = False) -> ReaderSeed:
    return ReaderSeed(tuple(float(v) for v in position), lymph_node)  # type: ignore[arg-type]


def _rtstruct_seeds(ds: Dataset, frame_of_reference_uid: str) -> list[ReaderSeed]:
    frames = {
        roi.ROINumber: str(roi.get("ReferencedFrameOfReferenceUID", ""))
        for roi in ds.get("StructureSetROISequence", [])
    }
    names = {roi.ROINumber: str(roi.get("ROIName", "")) for roi in ds.get("StructureSetROISequence", [])}
    seeds = []
    for roi in ds.get("ROIContourSequence", []):
        if frames.get(roi.ReferencedROINumber, frame_of_reference_uid) != frame_of_reference_uid:
            continue
        points = [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in roi.get("ContourSequence", [])]
        if points:
            name = names.get(roi.ReferencedROINumber, "")
            seeds.append(_seed(np.concatenate(points).mean(axis=0), bool(LYMPH_NODE_LABEL.search(name))))
    return seeds


def _seg_seeds(path: Path, frame_of_reference_uid: str) -> list[ReaderSeed]:
    seg = hd.seg.segread(path)
    if str(seg.get("FrameOfReferenceUID", "")) != frame_of_reference_uid:
        return []
    seeds = []
    for description in seg.SegmentSequence:
        volume = seg.get_volume(segment_numbers=[description.SegmentNumber], combine_segments=True)
        indices = np.argwhere(volume.array > 0)
        if len(indices):
            types = description.get("SegmentedPropertyTypeCodeSequence") or []
            node = any(t.CodeValue == LYMPH_NODE_CODE for t in types) or bool(
                LYMPH_NODE_LABEL.search(str(description.get("SegmentLabel", "")))
            )
            seeds.append(_seed(volume.map_indices_to_reference(indices.mean(axis=0, keepdims=True))[0], node))
    return seeds


def _image_point_to_patient(image: Dataset, column_row: np.ndarray) -> np.ndarray:
    orientation = np.asarray(image.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    # SCOORD (column, row) are in pixel units with (0.5, 0.5) at the centre of the first pixel.
    column, row = column_row[..., 0] - 0.5, column_row[..., 1] - 0.5
    return (
        np.asarray(image.ImagePositionPatient, dtype=float)
        + np.multiply.outer(column * column_spacing, orientation[:3])
        + np.multiply.outer(row * row_spacing, orientation[3:])
    )


def _sr_items(item: Dataset) -> Iterable[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _sr_items(child)


def _sr_seeds(ds: Dataset, frame_of_reference_uid: str, images: dict[str, Dataset]) -> list[ReaderSeed]:
    seeds = []
    for item in _sr_items(ds):
        if item.get("ValueType") == "SCOORD3D" and str(item.get("ReferencedFrameOfReferenceUID", "")) == (
            frame_of_reference_uid
        ):
            seeds.append(_seed(np.asarray(item.GraphicData, dtype=float).reshape(-1, 3).mean(axis=0)))
        elif item.get("ValueType") == "SCOORD":
            for reference in _sr_items(item):
                sop = reference.get("ReferencedSOPSequence")
                image = images.get(str(sop[0].ReferencedSOPInstanceUID)) if sop else None
                if image is not None and str(image.get("FrameOfReferenceUID", "")) == frame_of_reference_uid:
                    points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
                    seeds.append(_seed(_image_point_to_patient(image, points).mean(axis=0)))
    return seeds


def annotation_seeds(
    annotation_paths: Iterable[Path], frame_of_reference_uid: str, image_headers: dict[str, Dataset]
) -> list[ReaderSeed]:
    """Seeds of every annotation in the frame of reference; an unreadable annotation is logged and skipped.
    An RTSTRUCT ROI or SEG segment labelled a lymph node (name, or SEG property type SCT 59441001) marks a node."""
    seeds: list[ReaderSeed] = []
    for path in annotation_paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.SOPClassUID)
            if sop_class == str(RTStructureSetStorage):
                seeds += _rtstruct_seeds(ds, frame_of_reference_uid)
            elif sop_class == str(SegmentationStorage):
                seeds += _seg_seeds(path, frame_of_reference_uid)
            elif sop_class in SR_CLASSES:
                seeds += _sr_seeds(ds, frame_of_reference_uid, image_headers)
        except Exception as error:  # a malformed annotation must not stop the analysis of the study
            logger.warning("annotation %s not usable: %s: %s", Path(path).name, error.__class__.__name__, error)
    return seeds
