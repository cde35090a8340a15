"""Readers' regions on an image grid: RTSTRUCT ROIs rasterised, DICOM SEG segments resampled, and the rule
that tells a lesion from an organ, the body outline or a planning volume. Shared by the PET semi-automatic
mode and the CT lesions of the longitudinal method."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath

from pipelines.imaging.geometry import index_to_patient, patient_to_index
from pipelines.imaging.settings import AnnotationSettings
from pipelines.types import ReaderRegion, ReaderSeed, VolumeGeometry

logger = logging.getLogger(__name__)

ANATOMICAL_STRUCTURE = "123037004"  # SCT: the SEG property category of organs, not lesions
LYMPH_NODE_CODE = "59441001"  # SCT Lymph node
LESION_TYPES = {"GTV"}


@dataclass(frozen=True)
class LeftOut:
    """An annotated region that is not a lesion, and why."""

    label: str
    reason: str


def not_a_lesion(label: str, roi_type: str, settings: AnnotationSettings) -> str:
    """Why an annotated region is not a lesion ("" when it is one): its RT ROI Interpreted Type, else its label."""
    roi_type = roi_type.strip().upper()
    if roi_type in LESION_TYPES:
        return ""
    if roi_type in settings.non_lesion_roi_types:
        return f"RT ROI Interpreted Type {roi_type}"
    if re.search(settings.lesion_label, label):
        return ""
    if re.search(settings.non_lesion_label, label):
        return "its name marks an organ, the body outline or a planning volume"
    return ""


def geometry_affine(geometry: VolumeGeometry) -> np.ndarray:
    """4x4 affine from [slice, row, column, 1] to patient mm."""
    affine = np.eye(4)
    origin = index_to_patient(geometry, np.zeros(3))
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        affine[:3, axis] = index_to_patient(geometry, unit) - origin
    affine[:3, 3] = origin
    return affine


def resample_mask(source: np.ndarray, index_to_xyz: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """A mask given on another grid (affine from [slice, row, column] to patient mm) sampled at the target
    voxel centres by nearest neighbour, only inside the region's bounding box; empty where the region lies
    outside the target's coverage."""
    found = np.argwhere(source)
    empty = np.zeros(geometry.shape, dtype=bool)
    if not len(found):
        return empty
    low, high = found.min(axis=0) - 1, found.max(axis=0) + 1
    corners = np.array(
        [[a, b, c, 1.0] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])]
    )
    target_corners = patient_to_index(geometry, (corners @ index_to_xyz.T)[:, :3])
    start = np.clip(np.floor(target_corners.min(axis=0)).astype(int), 0, None)
    stop = np.minimum(np.ceil(target_corners.max(axis=0)).astype(int) + 1, geometry.shape)
    if np.any(stop <= start):
        return empty  # the region lies outside the target's coverage (a PET reaching beyond the CT, say)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij"), axis=-1)
    xyz = index_to_patient(geometry, grid.reshape(-1, 3))
    inverse = np.linalg.inv(index_to_xyz)
    source_index = np.rint((np.column_stack([xyz, np.ones(len(xyz))]) @ inverse.T)[:, :3]).astype(int)
    valid = np.all((source_index >= 0) & (source_index < source.shape), axis=1)
    values = np.zeros(len(xyz), dtype=bool)
    values[valid] = source[tuple(source_index[valid].T)]
    empty[tuple(slice(a, b) for a, b in zip(start, stop))] = values.reshape(grid.shape[:3])
    return empty


def _rtstruct_regions(
    ds: pydicom.Dataset,
    geometry: VolumeGeometry,
    frame_of_reference_uid: str,
    settings: AnnotationSettings,
    left_out: list[LeftOut],
    points: list[ReaderSeed],
) -> list[ReaderRegion]:
    """Each lesion ROI's closed planar contours rasterised on the grid (even-odd rule: inner contours are
    holes; a voxel is inside when its centre is; each contour on the slice nearest to its plane). An ROI of
    POINT contours only marks a lesion: its centroid goes to `points`."""
    node_label = re.compile(settings.lymph_node_label)
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    types = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
        for o in ds.get("RTROIObservationsSequence", [])
        if "ReferencedROINumber" in o
    }
    shape = geometry.shape
    rows, columns = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    centres = np.column_stack([columns.ravel(), rows.ravel()])
    regions = []
    for roi_contour in ds.get("ROIContourSequence", []):
        roi = rois.get(int(roi_contour.ReferencedROINumber))
        if roi is None or str(roi.get("ReferencedFrameOfReferenceUID", "")) != frame_of_reference_uid:
            continue
        name = str(roi.get("ROIName", f"ROI {roi.ROINumber}"))
        why = not_a_lesion(name, types.get(int(roi.ROINumber), ""), settings)
        if why:
            left_out.append(LeftOut(name, why))
            continue
        contours = list(roi_contour.get("ContourSequence", []))
        marks = [c for c in contours if str(c.get("ContourGeometricType", "")) == "POINT"]
        if contours and len(marks) == len(contours):
            xyz = np.concatenate([np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in marks])
            points.append(ReaderSeed(tuple(float(v) for v in xyz.mean(axis=0)), bool(node_label.search(name))))
            continue
        mask = np.zeros(shape, dtype=bool)
        for contour in contours:
            xyz = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            index = patient_to_index(geometry, xyz)  # [slice, row, column]
            z = int(round(float(np.median(index[:, 0]))))
            if not 0 <= z < shape[0] or len(index) < 3:
                continue
            inside = PolygonPath(index[:, [2, 1]]).contains_points(centres).reshape(shape[1], shape[2])
            mask[z] ^= inside
        if mask.any():
            regions.append(ReaderRegion(name, mask, bool(node_label.search(name)), "RTSTRUCT"))
        else:
            logger.warning("RTSTRUCT %s: ROI %s covers no voxel of the grid; ignored", ds.SOPInstanceUID, name)
    return regions


def _seg_regions(
    path: Path,
    geometry: VolumeGeometry,
    frame_of_reference_uid: str,
    settings: AnnotationSettings,
    left_out: list[LeftOut],
) -> list[ReaderRegion]:
    node_label = re.compile(settings.lymph_node_label)
    seg = hd.seg.segread(path)
    if str(seg.get("FrameOfReferenceUID", "")) != frame_of_reference_uid:
        return []
    regions = []
    for description in seg.SegmentSequence:
        label = str(description.get("SegmentLabel", f"Segment {description.SegmentNumber}"))
        category = description.get("SegmentedPropertyCategoryCodeSequence") or []
        if any(str(c.CodeValue) == ANATOMICAL_STRUCTURE for c in category):
            left_out.append(LeftOut(label, "SEG property category Anatomical Structure"))
            continue
        why = not_a_lesion(label, "", settings)
        if why:
            left_out.append(LeftOut(label, why))
            continue
        volume = seg.get_volume(segment_numbers=[description.SegmentNumber], combine_segments=True)
        mask = resample_mask(np.asarray(volume.array) > 0, np.asarray(volume.affine), geometry)
        types = description.get("SegmentedPropertyTypeCodeSequence") or []
        node = any(str(t.CodeValue) == LYMPH_NODE_CODE for t in types) or bool(node_label.search(label))
        if mask.any():
            regions.append(ReaderRegion(label, mask, node, "SEG"))
    return regions


@dataclass(frozen=True)
class Annotated:
    regions: tuple[ReaderRegion, ...]  # lesion regions on the grid
    points: tuple[ReaderSeed, ...]  # lesions marked by a point only (RTSTRUCT POINT ROIs)
    left_out: tuple[LeftOut, ...]  # annotated regions that are not lesions, and unusable annotations


def annotated_regions(
    paths: list[Path] | tuple[Path, ...],
    geometry: VolumeGeometry,
    frame_of_reference_uid: str,
    settings: AnnotationSettings,
) -> Annotated:
    """The lesion regions of every RTSTRUCT and SEG among `paths` in the frame of reference, on the grid;
    point marks; the annotated regions that are not lesions. An unreadable annotation is left out, saying why."""
    regions: list[ReaderRegion] = []
    left_out: list[LeftOut] = []
    points: list[ReaderSeed] = []
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class = str(header.SOPClassUID)
            if sop_class == pydicom.uid.RTStructureSetStorage:
                ds = pydicom.dcmread(path)
                regions += _rtstruct_regions(ds, geometry, frame_of_reference_uid, settings, left_out, points)
            elif sop_class == pydicom.uid.SegmentationStorage:
                regions += _seg_regions(Path(path), geometry, frame_of_reference_uid, settings, left_out)
        except Exception as error:  # a malformed annotation must not stop the analysis; the SR says it was not used
            reason = f"not usable: {error.__class__.__name__}: {error}"[:300]
            left_out.append(LeftOut(Path(path).name, reason))
    for item in left_out:
        logger.info("annotation %r is not a lesion (%s); left out", item.label, item.reason)
    return Annotated(tuple(regions), tuple(points), tuple(left_out))
