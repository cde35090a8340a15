"""FDG-avid lesion detection and adaptive-threshold segmentation.

Segmentation follows the PET immune-profiling method (CytAct from FDG-PET): each lesion is delineated
with T = β·I70 + I_background, β = 0.3, where I70 is the mean SUV of the voxels above 70 % of the
lesion's maximum and I_background the mean SUV of a background region around it. The method leaves
the background region open; here it is a shell between `background_inner_mm` and `background_outer_mm`
from the detected region, excluding every detected region (configurable).
Detection (left to readers in the method) is: connected regions (26-connectivity) above a fixed SUV
threshold with at least a minimum volume. Measurements: SUVmax, SUVmean, SUVpeak (mean in the 1 ml
sphere, centred in the lesion, with the highest mean), metabolic tumour volume, total lesion glycolysis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from immunode.config import PetQuantSettings
from pipelines.geometry import index_to_patient, patient_to_index
from pipelines.physiological import physiological_regions
from pipelines.recist import axial_diameters
from pipelines.types import Lesion, LesionMeasurements, PetVolume, ReaderRegion, ReaderSeed, VolumeGeometry

logger = logging.getLogger(__name__)
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _array_spacing(geometry: VolumeGeometry) -> np.ndarray:
    """Spacing in array axis order (slice, row, column)."""
    return np.asarray(geometry.spacing_mm[::-1], dtype=float)


def sphere_kernel(spacing_zyx: np.ndarray, volume_ml: float) -> np.ndarray:
    """Voxels whose centres lie inside a sphere of the given volume, centred on a voxel centre."""
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    half = np.floor(radius_mm / spacing_zyx).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_zyx)], indexing="ij")
    return (grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2) <= radius_mm**2


def _box(slices_of_component: tuple[slice, ...], margin: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(slices_of_component, margin, shape))


def _component_containing(mask: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    labels, _ = ndimage.label(mask, CONNECTIVITY)
    label = labels[seed]
    return labels == label if label else np.zeros_like(mask)


def label_volume(lesions: tuple[Lesion, ...] | list[Lesion], shape: tuple[int, ...]) -> np.ndarray:
    """One array holding each lesion's number on its voxels (lesions never overlap)."""
    labels = np.zeros(shape, dtype=np.uint16)
    for lesion in lesions:
        labels[lesion.box()][lesion.mask] = lesion.number
    return labels


def tracking_uid(study_uid: str, series_uid: str, centroid_mm: np.ndarray) -> str:
    """Deterministic per lesion position, so that re-running an unchanged study keeps its tracking UIDs."""
    position = ",".join(f"{v:.0f}" for v in centroid_mm)
    return generate_uid(prefix=None, entropy_srcs=["immunode-lesion", study_uid, series_uid, position])


def seeded_candidates(
    volume: PetVolume, seeds: Sequence[ReaderSeed], params: PetQuantSettings
) -> tuple[np.ndarray, int, set[int]]:
    """Candidate regions from reader-placed seeds (semi-automatic mode, as in the method): the hottest voxel
    within `seed_search_mm` of each seed, and the connected voxels above half of it around that maximum,
    limited to `seed_search_mm` + `background_inner_mm`. Seeds outside the volume or on no uptake are skipped.
    Returns the labels, their count and the labels a reader marked as lymph nodes."""
    suv = volume.suv
    spacing = _array_spacing(volume.geometry)
    labels = np.zeros(suv.shape, dtype=np.int32)
    count = 0
    reach = np.ceil((params.seed_search_mm + params.background_inner_mm) / spacing).astype(int) + 1
    nodes: set[int] = set()
    positions = np.asarray([s.position_mm for s in seeds], dtype=float).reshape(-1, 3)
    for reader_seed, seed in zip(seeds, patient_to_index(volume.geometry, positions)):
        centre = np.round(seed).astype(int)
        if np.any(centre < 0) or np.any(centre >= suv.shape):
            continue
        box = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, reach, suv.shape))
        starts = np.array([b.start for b in box]).reshape(3, 1, 1, 1)
        offsets = np.indices(tuple(b.stop - b.start for b in box)) + starts
        squared = ((offsets - seed.reshape(3, 1, 1, 1)) * spacing.reshape(3, 1, 1, 1)) ** 2
        distance = np.sqrt(squared.sum(axis=0))
        box_suv = suv[box]
        near = distance <= params.seed_search_mm
        peak = np.unravel_index(int(np.argmax(np.where(near, box_suv, -np.inf))), box_suv.shape)
        if box_suv[peak] <= 0 or labels[box][peak]:
            continue  # nothing there, or the lesion of an earlier seed
        region = _component_containing((box_suv >= 0.5 * box_suv[peak]) & (labels[box] == 0), peak)
        count += 1
        labels[box][region & (distance <= params.seed_search_mm + params.background_inner_mm)] = count
        if reader_seed.lymph_node:
            nodes.add(count)
    return labels, count, nodes


def _measured(
    volume: PetVolume,
    box: tuple[slice, ...],
    lesion_box: np.ndarray,
    box_suv: np.ndarray,
    threshold: float,
    i70: float,
    background: float,
    lymph_node: bool,
    number: int,
    peak_kernel: np.ndarray,
) -> Lesion:
    """A lesion (its voxels `lesion_box` inside `box`) with its measurements."""
    geometry = volume.geometry
    values = box_suv[lesion_box]
    voxel_count = int(lesion_box.sum())
    mtv_ml = voxel_count * geometry.voxel_volume_ml
    suv_mean = float(values.mean())
    filtered = ndimage.convolve(box_suv, peak_kernel, mode="nearest")
    suv_peak = float(filtered[lesion_box].max())
    tight = ndimage.find_objects(lesion_box.astype(np.uint8))[0]
    diameters = axial_diameters(
        lesion_box[tight], geometry.spacing_mm[1], geometry.spacing_mm[0], lymph_node=lymph_node
    )
    offset = tuple(b.start + t.start for b, t in zip(box, tight))
    centroid_index = np.array([b.start for b in box]) + np.argwhere(lesion_box).mean(axis=0)
    centroid_mm = index_to_patient(geometry, centroid_index)
    return Lesion(
        number=number,
        tracking_identifier=f"Lesion {number}",
        tracking_uid=tracking_uid(volume.study_instance_uid, volume.series_instance_uid, centroid_mm),
        measurements=LesionMeasurements(
            suv_max=float(values.max()),
            suv_mean=suv_mean,
            suv_peak=suv_peak,
            metabolic_volume_ml=mtv_ml,
            total_lesion_glycolysis=suv_mean * mtv_ml,
            voxel_count=voxel_count,
            threshold_suv=threshold,
            i70_suv=i70,
            background_suv=background,
            centroid_mm=tuple(float(v) for v in centroid_mm),  # type: ignore[arg-type]
            long_axis_mm=diameters.long_axis_mm,
            short_axis_mm=diameters.short_axis_mm,
            recist_target=diameters.target,
            lymph_node=lymph_node,
        ),
        offset=offset,  # type: ignore[arg-type]
        mask=lesion_box[tight].copy(),
    )


def segment_reader_regions(
    volume: PetVolume, regions: Sequence[ReaderRegion], params: PetQuantSettings
) -> tuple[Lesion, ...]:
    """The method inside each reader's volume of interest: T = beta * I70 + I_background with I70 the mean
    of the connected voxels above 70 % of the hottest voxel of the reader's region, the background a shell
    around the region (as in automatic detection), and the lesion every voxel >= T inside the region widened
    by `reader_margin_mm` (a contour drawn on CT or on a coarser grid may cut the PET edge), never inside
    another reader's region. Regions without uptake above the background give no lesion (logged)."""
    suv = volume.suv
    spacing = _array_spacing(volume.geometry)
    every = np.zeros(suv.shape, dtype=bool)
    for region in regions:
        every |= region.mask
    margin = np.ceil((params.background_outer_mm + params.reader_margin_mm) / spacing).astype(int) + 1
    peak_kernel = sphere_kernel(spacing, params.peak_sphere_ml).astype(np.float64)
    peak_kernel /= peak_kernel.sum()
    lesions: list[Lesion] = []
    for region in sorted(regions, key=lambda r: -float(suv[r.mask].max())):
        box = _box(ndimage.find_objects(region.mask.astype(np.uint8))[0], margin, suv.shape)
        box_suv = suv[box].astype(np.float64)
        inside = region.mask[box]
        distance_mm = ndimage.distance_transform_edt(~inside, sampling=spacing)
        voi = (distance_mm <= params.reader_margin_mm) & ~(every[box] & ~inside)
        shell = (distance_mm > params.background_inner_mm) & (distance_mm <= params.background_outer_mm)
        shell &= ~every[box]
        background = float(box_suv[shell].mean()) if shell.any() else 0.0
        seed = np.unravel_index(int(np.argmax(np.where(inside, box_suv, -np.inf))), box_suv.shape)
        hot = _component_containing((box_suv >= params.i70_fraction * box_suv[seed]) & voi, seed)
        i70 = float(box_suv[hot].mean())
        threshold = params.beta * i70 + background
        lesion_box = voi & (box_suv >= threshold)
        if not lesion_box.any() or box_suv[seed] <= background:
            logger.warning(
                "series %s: reader region %r has no uptake above its background; no lesion",
                volume.series_instance_uid,
                region.label[:64],
            )
            continue
        lesions.append(
            _measured(
                volume,
                box,
                lesion_box,
                box_suv,
                threshold,
                i70,
                background,
                region.lymph_node,
                len(lesions) + 1,
                peak_kernel,
            )  # fmt: skip
        )
    return tuple(lesions)


def segment_lesions(
    volume: PetVolume,
    params: PetQuantSettings,
    seeds: Sequence[ReaderSeed] | None = None,
    ct_hu: np.ndarray | None = None,
) -> tuple[Lesion, ...]:
    """Automatic detection, or (with seeds) the semi-automatic mode; then the adaptive threshold per lesion."""
    suv = volume.suv
    geometry = volume.geometry
    spacing = _array_spacing(geometry)
    voxel_ml = geometry.voxel_volume_ml

    nodes: set[int] = set()
    if seeds is None:
        labels, count = ndimage.label(suv >= params.detection_suv_threshold, CONNECTIVITY)
        minimum_ml = params.min_lesion_volume_ml
    else:
        labels, count, nodes = seeded_candidates(volume, seeds, params)
        minimum_ml = 0.0  # a reader said it is a lesion
    if count == 0:
        return ()
    index = np.arange(1, count + 1)
    voxel_counts = ndimage.sum_labels(np.ones_like(suv, dtype=np.int32), labels, index)
    maxima = ndimage.maximum(suv, labels, index)
    kept = [int(i) for i, n in zip(index, voxel_counts) if n > 0 and n * voxel_ml >= minimum_ml]
    excluded: dict[int, str] = {}
    if seeds is None:  # a reader's seed is never overruled
        excluded = physiological_regions(volume, labels, kept, params.physiological, ct_hu)
        kept = [label for label in kept if label not in excluded]
        for label, organ in excluded.items():
            logger.info(
                "series %s: region of SUVmax %.1f taken for physiological uptake (%s), not reported",
                volume.series_instance_uid,
                maxima[label - 1],
                organ,
            )
    kept.sort(key=lambda i: -maxima[i - 1])
    kept = kept[: params.max_lesions]
    detected = labels > 0
    component_slices = ndimage.find_objects(labels)
    margin = np.ceil(params.background_outer_mm / spacing).astype(int) + 1
    peak_kernel = sphere_kernel(spacing, params.peak_sphere_ml).astype(np.float64)
    peak_kernel /= peak_kernel.sum()
    claimed = np.zeros(suv.shape, dtype=bool)

    lesions: list[Lesion] = []
    for label in kept:
        box = _box(component_slices[label - 1], margin, suv.shape)
        box_suv = suv[box].astype(np.float64)
        component = labels[box] == label
        distance_mm = ndimage.distance_transform_edt(~component, sampling=spacing)
        shell = (distance_mm > params.background_inner_mm) & (distance_mm <= params.background_outer_mm)
        shell &= ~detected[box]
        background = float(box_suv[shell].mean()) if shell.any() else 0.0

        component_values = np.where(component, box_suv, -np.inf)
        seed = np.unravel_index(int(np.argmax(component_values)), box_suv.shape)
        suv_max_detected = float(box_suv[seed])
        hot = _component_containing(box_suv >= params.i70_fraction * suv_max_detected, seed)
        i70 = float(box_suv[hot].mean())
        threshold = params.beta * i70 + background

        allowed = (distance_mm <= params.background_inner_mm) & ~claimed[box]
        allowed &= ~(detected[box] & ~component)  # never take voxels of another detected region
        lesion_box = _component_containing((box_suv >= threshold) & allowed, seed)
        if not lesion_box.any():
            continue
        claimed[box] |= lesion_box
        lesions.append(
            _measured(
                volume,
                box,
                lesion_box,
                box_suv,
                threshold,
                i70,
                background,
                label in nodes,
                len(lesions) + 1,
                peak_kernel,
            )  # fmt: skip
        )
    return tuple(lesions)
