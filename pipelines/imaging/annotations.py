"""Reader annotations sent by the PACS, for the semi-automatic mode of the PET immune-profiling method
(lesions identified by a reader, then segmented by the method).

A region (an RTSTRUCT ROI, a DICOM SEG segment) is the reader's volume of interest: the method's threshold
is applied inside it (`pipelines.petlesions.lesions.segment_reader_regions`). A point (a TID 1500 SR point or region in
3D coordinates, or 2D coordinates on an image of the study; an RTSTRUCT POINT ROI) marks a lesion: it keeps
the seed behaviour. Only annotations in the PET's frame of reference are used; organs, the body outline and
planning volumes are not lesions (`pipelines.imaging.contours`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage, SegmentationStorage

from pipelines.imaging.contours import annotated_regions
from pipelines.imaging.settings import AnnotationSettings
from pipelines.types import ReaderRegion, ReaderSeed, VolumeGeometry

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


FINDING_SITE = "363698007"  # SCT Finding Site (TID 1500 measurement groups)


def _seed(position: np.ndarray, site: str = "") -> ReaderSeed:
    return ReaderSeed(tuple(float(v) for v in position), site_text=site)  # type: ignore[arg-type]


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


def _sr_items(item: Dataset, site: str = "") -> Iterable[tuple[Dataset, str]]:
    """Every content item, with the Finding Site stated in its container (a TID 1500 measurement group) or above."""
    children = list(item.get("ContentSequence", []))
    for child in children:
        name = child.get("ConceptNameCodeSequence")
        if child.get("ValueType") == "CODE" and name and str(name[0].CodeValue) == FINDING_SITE:
            value = child.get("ConceptCodeSequence")
            site = str(value[0].get("CodeMeaning", "")) if value else site
    for child in children:
        yield child, site
        yield from _sr_items(child, site)


def _sr_seeds(ds: Dataset, frame_of_reference_uid: str, images: dict[str, Dataset]) -> list[ReaderSeed]:
    seeds = []
    for item, site in _sr_items(ds):
        if item.get("ValueType") == "SCOORD3D" and str(item.get("ReferencedFrameOfReferenceUID", "")) == (
            frame_of_reference_uid
        ):
            seeds.append(_seed(np.asarray(item.GraphicData, dtype=float).reshape(-1, 3).mean(axis=0), site))
        elif item.get("ValueType") == "SCOORD":
            for reference, _ in _sr_items(item):
                sop = reference.get("ReferencedSOPSequence")
                image = images.get(str(sop[0].ReferencedSOPInstanceUID)) if sop else None
                if image is not None and str(image.get("FrameOfReferenceUID", "")) == frame_of_reference_uid:
                    points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
                    seeds.append(_seed(_image_point_to_patient(image, points).mean(axis=0), site))
    return seeds


@dataclass(frozen=True)
class ReaderAnnotations:
    regions: tuple[ReaderRegion, ...]
    seeds: tuple[ReaderSeed, ...]
    left_out: tuple[str, ...]  # "label: why" of annotated regions that are not lesions or not usable

    @property
    def count(self) -> int:
        return len(self.regions) + len(self.seeds)


def reader_annotations(
    annotation_paths: Iterable[Path],
    geometry: VolumeGeometry,
    frame_of_reference_uid: str,
    image_headers: dict[str, Dataset],
    settings: AnnotationSettings,
    series_instance_uid: str = "",
    modality: str = "PT",
) -> ReaderAnnotations:
    """Regions (RTSTRUCT, SEG) on the grid of the analysed series and point seeds (SR, RTSTRUCT points) of every
    annotation in the frame of reference, overlapping regions of one tumour merged; an unreadable annotation is
    left out, saying why."""
    paths = list(annotation_paths)
    annotated = annotated_regions(paths, geometry, frame_of_reference_uid, settings, series_instance_uid, modality)
    seeds = list(annotated.points)
    left_out = [f"{item.label}: {item.reason}" for item in annotated.left_out]
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if str(ds.SOPClassUID) in SR_CLASSES:
                seeds += _sr_seeds(ds, frame_of_reference_uid, image_headers)
        except Exception as error:  # a malformed annotation must not stop the analysis; the SR says so
            left_out.append(f"{Path(path).name}: not usable: {error.__class__.__name__}: {error}"[:300])
    return ReaderAnnotations(annotated.regions, tuple(seeds), tuple(left_out))


def reader_source_statements(lesions: Iterable[object]) -> list[str]:
    """One line per lesion defined by readers' annotations, for the PET and CT reports alike: the annotated regions
    it stands for (label, object, SOP Instance UID; why a region counts as a lesion when its name and type
    disagree) and, when one tumour was annotated more than once, how the regions were merged."""
    lines = []
    for lesion in lesions:
        sources = getattr(lesion, "sources", ())
        if not sources:
            continue
        note = getattr(lesion, "merge_note", "")
        line = f"{getattr(lesion, 'tracking_identifier', '')}: reader annotation(s) "
        line += "; ".join(source.describe() for source in sources)
        lines.append(line + (f"; {note}" if note else "") + ".")
    return lines
