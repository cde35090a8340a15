"""Lesions on the CT of a study, for the longitudinal CT radiomics method.

Source, in this order: annotations the PACS sent on the CT (RTSTRUCT ROIs or DICOM SEG segments in the
CT's frame of reference, one lesion each), else the PET lesions of the same study (the adaptive threshold of
the PET lesion method, `pipelines.petlesions`, with the parameters of `pipelines.pet_quant`) mapped onto the CT
grid (same frame of reference), else none (the job says so).
Roles: a label matching `primary_label` marks the primary tumour (several such labels: their union is the
primary volume); without one, `primary_rule` decides ("largest" lesion by volume, or "none"). Every other
lesion is a metastasis; metastases are merged into one volume (M) for extraction, as in the method.

Not every contour is a lesion: names (AAPM TG-263) and RT ROI Interpreted Types are read together
(`pipelines.imaging.contours.classify`: a GTV name is a lesion whatever its type, planning volumes stay out
unless configured, an organ's name typed GTV is an organ, other non-lesion types and names are left out). What
was left out is logged and stated in the SR; the lesions keep their contour's name (the SEG segment label, the
SR's tracking identifier). Overlapping contours of one tumour from different annotations (drawn on the PET and on
the CT, say) are one lesion, its extent the contour drawn on the CT, its sources naming all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from common.types import LesionRole, parse_dicom_date
from pipelines.ct.settings import CtRadiomicsSettings
from pipelines.ct.types import CtLesion
from pipelines.errors import NothingToAnalyse, SeriesNotUsable
from pipelines.imaging.contours import LeftOut, annotated_regions, geometry_affine, resample_mask
from pipelines.imaging.geometry import index_to_patient
from pipelines.imaging.recist import axial_diameters
from pipelines.imaging.series import geometry_order, read_headers
from pipelines.imaging.settings import AnnotationSettings
from pipelines.petlesions.lesions import segment_lesions
from pipelines.petlesions.settings import PetLesionSettings
from pipelines.petlesions.volume import load_pet_volume
from pipelines.types import AnnotationSource, VolumeGeometry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CtVolume:
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    paths: tuple[Path, ...]  # slice order
    geometry: VolumeGeometry
    hu: np.ndarray  # float32 [slice, row, column]
    study_date: date | None = None


@dataclass(frozen=True, eq=False)
class _Region:
    label: str
    mask: np.ndarray  # bool on the whole CT grid
    source: str
    lymph_node: bool = False
    sources: tuple[AnnotationSource, ...] = ()  # the readers' annotated regions behind it
    merge_note: str = ""


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
        parse_dicom_date(str(first.get("StudyDate", ""))),
    )


def annotation_regions(
    annotations: Sequence[Path], ct: CtVolume, settings: AnnotationSettings
) -> tuple[list[_Region], list[LeftOut]]:
    """The readers' lesion regions (RTSTRUCT ROIs, SEG segments) on the CT grid, and what is not a lesion."""
    found = annotated_regions(
        tuple(annotations), ct.geometry, ct.frame_of_reference_uid, settings, ct.series_instance_uid, "CT"
    )
    left_out = list(found.left_out) + [LeftOut("point mark", "a point, not a region, on the CT") for _ in found.points]
    regions = [_Region(r.label, r.mask, "annotation", r.lymph_node, r.sources, r.merge_note) for r in found.regions]
    return regions, left_out


def pet_regions(pet_paths: Sequence[Path], ct: CtVolume, params: PetLesionSettings) -> list[_Region]:
    """PET lesions of the study (automatic detection of the PET pipeline) on the CT grid."""
    pet = load_pet_volume(pet_paths)
    if pet.frame_of_reference_uid != ct.frame_of_reference_uid:
        return []
    affine = geometry_affine(pet.geometry)
    regions = []
    for lesion in segment_lesions(pet, params):
        full = np.zeros(pet.geometry.shape, dtype=bool)
        full[lesion.box()] = lesion.mask
        mask = resample_mask(full, affine, ct.geometry)
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
        tracking_identifier=f"CT lesion {number}" + (f": {region.label}"[:40] if region.source == "annotation" else ""),
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
        sources=region.sources,
        merge_note=region.merge_note,
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
    pet_params: PetLesionSettings,
    annotation_settings: AnnotationSettings | None = None,
) -> tuple[tuple[CtLesion, ...], str, str, tuple[LeftOut, ...]]:
    """(lesions, source, primary reason, annotated regions left out as not lesions); raises NothingToAnalyse
    when no lesion is defined."""
    regions, left_out = annotation_regions(annotations, ct, annotation_settings or AnnotationSettings())
    source = "annotation"
    if not regions and settings.pet_fallback and pet_paths:
        regions, source = pet_regions(pet_paths, ct, pet_params), "pet"
    if not regions:
        looked = "CT annotations (SEG/RTSTRUCT in the CT's frame of reference)"
        looked += " or PET lesions of the study" if settings.pet_fallback else ""
        raise NothingToAnalyse(f"no lesions defined on the CT: no {looked}")
    lesions, reason = assign_roles(regions, ct, settings)
    return lesions, source, reason, tuple(left_out)


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
