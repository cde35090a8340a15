"""DICOM SEG building blocks: one segment per lesion (any pipeline's lesion: a bool mask box on the source
grid, a number, a tracking identifier and UID), and the SR's reference to a segment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from common.version import __version__
from pipelines.output.sources import conform_copied_attributes
from pipelines.output.sr import MANUFACTURER
from pipelines.types import AlgorithmIdentity


class Segmented(Protocol):
    """What a SEG needs of a lesion: its voxels as a bool box at `offset` (slice, row, column) of the source."""

    number: int
    tracking_identifier: str
    tracking_uid: str
    offset: tuple[int, int, int]
    mask: np.ndarray

    def box(self) -> tuple[slice, slice, slice]: ...


def label_volume(lesions: Sequence[Segmented], shape: tuple[int, ...]) -> np.ndarray:
    """One array holding each lesion's number on its voxels (lesions never overlap)."""
    labels = np.zeros(shape, dtype=np.uint16)
    for lesion in lesions:
        labels[lesion.box()][lesion.mask] = lesion.number
    return labels


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
    lesions: Sequence[Segmented],
    identity: AlgorithmIdentity,
    content_description: str,
    series_description: str,
    series_number: int,
) -> hd.seg.Segmentation:
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=lesion.number,
            segment_label=lesion.tracking_identifier,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_seg_algorithm(identity),
            tracking_uid=lesion.tracking_uid,
            tracking_id=lesion.tracking_identifier,
        )
        for lesion in lesions
    ]
    # A label array (segment numbers on non-overlapping lesions) instead of one mask per segment.
    pixel_array = label_volume(lesions, (len(source_images), int(source_images[0].Rows), int(source_images[0].Columns)))
    segmentation = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=identity.name,
        software_versions=__version__,
        device_serial_number="1",
        content_description=content_description,
        content_label="LESIONS",
        series_description=series_description,
    )
    conform_copied_attributes(segmentation)
    return segmentation


def referenced_segment(
    lesion: Segmented, segmentation: hd.seg.Segmentation, source_images: Sequence[Dataset]
) -> hd.sr.ReferencedSegment:
    # Built explicitly: highdicom's ReferencedSegment.from_segmentation fails on a single-segment SEG,
    # whose segment identification sits in the shared, not per-frame, functional groups.
    slices = lesion.offset[0] + np.flatnonzero(lesion.mask.any(axis=(1, 2)))
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(segmentation.SOPClassUID),
        sop_instance_uid=str(segmentation.SOPInstanceUID),
        segment_number=lesion.number,
        source_images=[hd.sr.SourceImageForSegmentation.from_source_image(source_images[i]) for i in slices],
    )
