"""Lesions on the CT of a study, for the longitudinal CT radiomics method.

Source, in this order: annotations the PACS sent on the CT (RTSTRUCT ROIs or DICOM SEG segments in the
CT's frame of reference, one lesion each), else the PET lesions of the same study (adaptive threshold of
the PET pipeline) mapped onto the CT grid (same frame of reference), else none (the job says so).
Roles: a label matching `primary_label` marks the primary tumour (several such labels: their union is the
primary volume); without one, `primary_rule` decides ("largest" lesion by volume, or "none"). Every other
lesion is a metastasis; metastases are merged into one volume (M) for extraction, as in the method.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.uid import RTStructureSetStorage, SegmentationStorage, generate_uid
from scipy import ndimage

from immunode.config import CtRadiomicsSettings, PetQuantSettings
from pipelines.errors import NothingToAnalyse, SeriesNotUsable
from pipelines.geometry import index_to_patient, patient_to_index
from pipelines.lesions import segment_lesions
from pipelines.pet_volume import geometry_order, load_pet_volume, read_headers
from pipelines.recist import axial_diameters
from pipelines.types import CtLesion, LesionRole, VolumeGeometry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CtVolume:
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    paths: tuple[Path, ...]  # slice order
    geometry: VolumeGeometry
    hu: np.ndarray  # float32 [slice, row, column]


@dataclass(frozen=True, eq=False)
class _Region:
    label: str
    mask: np.ndarray  # bool on the whole CT grid
    source: str
    lymph_node: bool = False


def load_ct_volume(paths: Sequence[Path]) -> CtVolume:
    headers = read_headers(paths)
    datasets = [ds for _, ds in headers]
    if any(ds.get("Modality") != "CT" for ds in datasets):
        raise SeriesNotUsable("not a CT series (Modality is not CT)")
    if len({ds.SeriesInstanceUID for ds in datasets}) != 1:
        raise SeriesNotUsable("files belong to more than one series")
    order, geometry = geometry_order(datasets)
    hu = np.empty(geometry.shape, dtype=np.float32)
    for index, i in enumerate(order):
        ds = datasets[i]
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        hu[index] = ds.pixel_array.astype(np.float32) * slope + intercept
    first = datasets[order[0]]
    return CtVolume(
        str(first.SeriesInstanceUID),
        str(first.StudyInstanceUID),
        str(first.get("FrameOfReferenceUID", "")),
        tuple(headers[i][0] for i in order),
        geometry,
        hu,
    )


def _rtstruct_regions(ds: pydicom.Dataset, ct: CtVolume, node_label: re.Pattern) -> list[_Region]:
    """Each ROI's closed planar contours rasterised on the CT grid (even-odd rule: inner contours are holes;
    a voxel is inside when its centre is)."""
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    shape = ct.geometry.shape
    rows, columns = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    centres = np.column_stack([columns.ravel(), rows.ravel()])
    regions = []
    for roi_contour in ds.get("ROIContourSequence", []):
        roi = rois.get(int(roi_contour.ReferencedROINumber))
        if roi is None or str(roi.get("ReferencedFrameOfReferenceUID", "")) != ct.frame_of_reference_uid:
            continue
        mask = np.zeros(shape, dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            index = patient_to_index(ct.geometry, points)  # [slice, row, column]
            z = int(round(float(np.median(index[:, 0]))))
            if not 0 <= z < shape[0] or len(index) < 3:
                continue
            inside = PolygonPath(index[:, [2, 1]]).contains_points(centres).reshape(shape[1], shape[2])
            mask[z] ^= inside
        name = str(roi.get("ROIName", f"ROI {roi.ROINumber}"))
        if mask.any():
            regions.append(_Region(name, mask, "annotation", bool(node_label.search(name))))
        else:
            logger.warning("RTSTRUCT %s: ROI %s covers no CT voxel; ignored", ds.SOPInstanceUID, roi.ROINumber)
    return regions


def _pull(source: np.ndarray, index_to_xyz: np.ndarray, ct: CtVolume) -> np.ndarray:
    """A mask given on another grid (affine from [slice, row, column] to patient mm) sampled at the CT voxel
    centres by nearest neighbour, only inside the region's bounding box."""
    found = np.argwhere(source)
    if not len(found):
        return np.zeros(ct.geometry.shape, dtype=bool)
    low, high = found.min(axis=0) - 1, found.max(axis=0) + 1
    corners = np.array(
        [[a, b, c, 1.0] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])]
    )
    ct_corners = patient_to_index(ct.geometry, (corners @ index_to_xyz.T)[:, :3])
    start = np.clip(np.floor(ct_corners.min(axis=0)).astype(int), 0, None)
    stop = np.minimum(np.ceil(ct_corners.max(axis=0)).astype(int) + 1, ct.geometry.shape)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij"), axis=-1)
    xyz = index_to_patient(ct.geometry, grid.reshape(-1, 3))
    inverse = np.linalg.inv(index_to_xyz)
    source_index = np.rint((np.column_stack([xyz, np.ones(len(xyz))]) @ inverse.T)[:, :3]).astype(int)
    valid = np.all((source_index >= 0) & (source_index < source.shape), axis=1)
    values = np.zeros(len(xyz), dtype=bool)
    values[valid] = source[tuple(source_index[valid].T)]
    mask = np.zeros(ct.geometry.shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = values.reshape(grid.shape[:3])
    return mask


def geometry_affine(geometry: VolumeGeometry) -> np.ndarray:
    """4×4 affine from [slice, row, column, 1] to patient mm."""
    affine = np.eye(4)
    origin = index_to_patient(geometry, np.zeros(3))
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        affine[:3, axis] = index_to_patient(geometry, unit) - origin
    affine[:3, 3] = origin
    return affine


def _seg_regions(path: Path, ct: CtVolume, node_label: re.Pattern) -> list[_Region]:
    seg = hd.seg.segread(path)
    if str(seg.get("FrameOfReferenceUID", "")) != ct.frame_of_reference_uid:
        return []
    regions = []
    for description in seg.SegmentSequence:
        volume = seg.get_volume(segment_numbers=[description.SegmentNumber], combine_segments=True)
        label = str(description.get("SegmentLabel", f"Segment {description.SegmentNumber}"))
        mask = _pull(np.asarray(volume.array) > 0, np.asarray(volume.affine), ct)
        if mask.any():
            regions.append(_Region(label, mask, "annotation", bool(node_label.search(label))))
    return regions


def annotation_regions(annotations: Sequence[Path], ct: CtVolume, node_label: re.Pattern) -> list[_Region]:
    regions: list[_Region] = []
    for path in annotations:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        sop_class = str(header.SOPClassUID)
        if sop_class == RTStructureSetStorage:
            regions += _rtstruct_regions(pydicom.dcmread(path), ct, node_label)
        elif sop_class == SegmentationStorage:
            regions += _seg_regions(path, ct, node_label)
    return regions


def pet_regions(pet_paths: Sequence[Path], ct: CtVolume, params: PetQuantSettings) -> list[_Region]:
    """PET lesions of the study (automatic detection of the PET pipeline) on the CT grid."""
    pet = load_pet_volume(pet_paths)
    if pet.frame_of_reference_uid != ct.frame_of_reference_uid:
        return []
    affine = geometry_affine(pet.geometry)
    regions = []
    for lesion in segment_lesions(pet, params):
        full = np.zeros(pet.geometry.shape, dtype=bool)
        full[lesion.box()] = lesion.mask
        mask = _pull(full, affine, ct)
        if mask.any():
            regions.append(_Region(f"PET lesion {lesion.number}", mask, "pet"))
    return regions


def _lesion(region: _Region, number: int, role: LesionRole, ct: CtVolume) -> CtLesion:
    box = ndimage.find_objects(region.mask.astype(np.uint8))[0]
    mask = region.mask[box]
    centroid = index_to_patient(ct.geometry, np.array([s.start for s in box]) + np.argwhere(mask).mean(axis=0))
    diameters = axial_diameters(mask, ct.geometry.spacing_mm[1], ct.geometry.spacing_mm[0], region.lymph_node)
    centroid_mm = tuple(round(float(v), 3) for v in centroid)
    return CtLesion(
        number=number,
        tracking_identifier=f"CT lesion {number}",
        # Deterministic, so that analysing the same study again gives the same identity.
        tracking_uid=generate_uid(entropy_srcs=[ct.series_instance_uid, region.label, repr(centroid_mm)]),
        role=role,
        source=region.source,
        label=region.label[:64],
        lymph_node=region.lymph_node,
        offset=tuple(s.start for s in box),  # type: ignore[arg-type]
        mask=mask.copy(),
        volume_ml=float(mask.sum()) * ct.geometry.voxel_volume_ml,
        centroid_mm=centroid_mm,  # type: ignore[arg-type]
        long_axis_mm=diameters.long_axis_mm,
        short_axis_mm=diameters.short_axis_mm,
    )


def assign_roles(
    regions: Sequence[_Region], ct: CtVolume, settings: CtRadiomicsSettings
) -> tuple[tuple[CtLesion, ...], str]:
    """Lesions (largest first, at most `max_lesions`) with their roles, and how the primary was chosen."""
    kept = sorted(regions, key=lambda r: -int(r.mask.sum()))[: settings.max_lesions]
    # One voxel belongs to one lesion (the SEG is a label map): a larger lesion keeps shared voxels.
    claimed = np.zeros(ct.geometry.shape, dtype=bool)
    separate = []
    for region in kept:
        own = region.mask & ~claimed
        claimed |= own
        if own.any():
            separate.append(replace(region, mask=own))
    kept = separate
    if len(kept) < len(regions):
        logger.warning("study %s: %d lesions, the largest %d kept", ct.study_instance_uid, len(regions), len(kept))
    primary = re.compile(settings.primary_label)
    labelled = [i for i, r in enumerate(kept) if r.source == "annotation" and primary.search(r.label)]
    if labelled:
        reason = f"primary from the label ({', '.join(kept[i].label for i in labelled)})"
    elif settings.primary_rule == "largest" and kept:
        labelled = [0]
        reason = f"no label names a primary; rule 'largest': the largest lesion ({kept[0].label}) is the primary"
    else:
        reason = "no label names a primary; rule 'none': all lesions are metastases"
    lesions = tuple(
        _lesion(region, number, LesionRole.PRIMARY if i in labelled else LesionRole.METASTASIS, ct)
        for number, (i, region) in enumerate(enumerate(kept), start=1)
    )
    return lesions, reason


def ct_lesions(
    ct: CtVolume,
    annotations: Sequence[Path],
    pet_paths: Sequence[Path],
    settings: CtRadiomicsSettings,
    pet_params: PetQuantSettings,
) -> tuple[tuple[CtLesion, ...], str, str]:
    """(lesions, source, primary reason); raises NothingToAnalyse when no lesion is defined."""
    node_label = re.compile(settings.lymph_node_label)
    regions = annotation_regions(annotations, ct, node_label)
    source = "annotation"
    if not regions and settings.pet_fallback and pet_paths:
        regions, source = pet_regions(pet_paths, ct, pet_params), "pet"
    if not regions:
        looked = "CT annotations (SEG/RTSTRUCT in the CT's frame of reference)"
        looked += " or PET lesions of the study" if settings.pet_fallback else ""
        raise NothingToAnalyse(f"no lesions defined on the CT: no {looked}")
    lesions, reason = assign_roles(regions, ct, settings)
    return lesions, source, reason


def volume_masks(lesions: Sequence[CtLesion], shape: tuple[int, int, int], per_lesion: bool) -> dict[str, np.ndarray]:
    """Masks to extract: P (primary), M (all metastases merged) and, optionally, each lesion (L<n>)."""
    masks: dict[str, np.ndarray] = {}
    for name, role in (("P", LesionRole.PRIMARY), ("M", LesionRole.METASTASIS)):
        chosen = [lesion for lesion in lesions if lesion.role is role]
        if chosen:
            mask = np.zeros(shape, dtype=bool)
            for lesion in chosen:
                mask[lesion.box()] |= lesion.mask
            masks[name] = mask
    if per_lesion:
        for lesion in lesions:
            mask = np.zeros(shape, dtype=bool)
            mask[lesion.box()] = lesion.mask
            masks[f"L{lesion.number}"] = mask
    return masks
