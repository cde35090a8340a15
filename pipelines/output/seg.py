"""DICOM SEG building blocks: one segment per lesion (any pipeline's lesion: a bool mask box on the source
grid, a number, a tracking identifier and UID), and the SR's reference to a segment."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from common.version import __version__
from pipelines.output.sources import conform_copied_attributes
from pipelines.output.sr import MANUFACTURER, new_instance
from pipelines.types import AlgorithmIdentity, SegmentedLesion


def label_volume(lesions: Sequence[SegmentedLesion], shape: tuple[int, ...]) -> np.ndarray:
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
    lesions: Sequence[SegmentedLesion],
    identity: AlgorithmIdentity,
    content_description: str,
    series_description: str,
    series_number: int,
    algorithm_type: hd.seg.SegmentAlgorithmTypeValues = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
) -> hd.seg.Segmentation:
    """`algorithm_type`: AUTOMATIC for candidates the node found, SEMIAUTOMATIC for lesions a reader's region or
    mark defined and the method delineated."""
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
        **new_instance(series_number),
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
    lesion: SegmentedLesion, segmentation: hd.seg.Segmentation, source_images: Sequence[Dataset]
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
