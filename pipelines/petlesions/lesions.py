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
from dataclasses import dataclass, replace

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from pipelines.imaging.geometry import index_to_patient, patient_to_index
from pipelines.imaging.recist import axial_diameters, meets_target_size, nodal_site
from pipelines.petlesions.anatomy import AnatomyMap
from pipelines.petlesions.candidates import candidate_score
from pipelines.petlesions.physiological import physiological_regions
from pipelines.petlesions.settings import PetLesionSettings
from pipelines.petlesions.types import Lesion, LesionMeasurements, PetVolume
from pipelines.petlesions.uptake import split_uptake
from pipelines.types import ReaderRegion, ReaderSeed, VolumeGeometry

logger = logging.getLogger(__name__)
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
# The RECIST size rule is claimed only for a diameter of at least this many voxels: RECIST asks for twice the
# slice thickness on coarse images, and our diameters run between the end voxels' outer edges (+1 voxel).
PET_MEASURABLE_VOXELS = 3.0


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
    volume: PetVolume, seeds: Sequence[ReaderSeed], params: PetLesionSettings
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
    # RECIST 1.1 measures on CT with slices of at most 5 mm; on coarser images the minimum measurable size is
    # twice the slice thickness. A PET voxel is a slice in every direction here: the size rule is claimed only
    # for a lesion at least `PET_MEASURABLE_VOXELS` of the largest voxel dimension across, and never below
    # the RECIST minimum.
    target = _target_on_pet(diameters.long_axis_mm, diameters.short_axis_mm, lymph_node, geometry)
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
            recist_target=target,
            lymph_node=lymph_node,
        ),
        offset=offset,  # type: ignore[arg-type]
        mask=lesion_box[tight].copy(),
    )


def _target_on_pet(long_axis: float, short_axis: float, lymph_node: bool, geometry: VolumeGeometry) -> bool:
    measured = short_axis if lymph_node else long_axis
    return meets_target_size(long_axis, short_axis, lymph_node) and (
        measured >= PET_MEASURABLE_VOXELS * max(geometry.spacing_mm)
    )


def with_organ_node_rule(lesion: Lesion, organ: str, geometry: VolumeGeometry) -> Lesion:
    """A lesion whose organ names a lymph node is a node, judged by its short axis (RECIST 1.1: >= 15 mm), as a
    reader-labelled node is; other lesions are returned as they are."""
    if lesion.measurements.lymph_node or not nodal_site(organ):
        return lesion
    m = lesion.measurements
    target = _target_on_pet(m.long_axis_mm, m.short_axis_mm, True, geometry)
    return replace(lesion, measurements=replace(m, lymph_node=True, recist_target=target))


def segment_reader_regions(
    volume: PetVolume, regions: Sequence[ReaderRegion], params: PetLesionSettings
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
        number = len(lesions) + 1
        lesion = _measured(
            volume, box, lesion_box, box_suv, threshold, i70, background, region.lymph_node, number, peak_kernel
        )
        lesions.append(replace(lesion, sources=region.sources, merge_note=region.merge_note))
    return tuple(lesions)


@dataclass(frozen=True)
class Detection:
    """Lesions found automatically, and what the report must say about what was not reported."""

    lesions: tuple[Lesion, ...]
    excluded: tuple[str, ...] = ()  # physiological uptake left out: "organ: why"
    candidates: int = 0  # foci that were lesion candidates (not physiological, large enough)
    capped: int = 0  # lesions beyond `max_lesions`, not reported
    too_small: int = 0  # lesions below `min_lesion_volume_ml` after the adaptive threshold, not reported
    low_contrast: int = 0  # candidates whose SUVmax stays below `min_lesion_contrast` times their background
    low_score: int = 0  # candidates whose score stays below `min_candidate_score`, not reported
    # Each reported candidate's score and what on the CT lowered it: "Lesion n: score s; evidence".
    scores: tuple[str, ...] = ()

    def notes(self, params: PetLesionSettings) -> tuple[str, ...]:
        notes = []
        if self.excluded:
            notes.append("Left out as physiological uptake: " + "; ".join(self.excluded) + ".")
        if self.too_small:
            notes.append(
                f"{self.too_small} candidate(s) below {params.min_lesion_volume_ml} ml after the adaptive "
                "threshold, not reported."
            )
        if self.low_contrast:
            notes.append(
                f"{self.low_contrast} candidate(s) with SUVmax below {params.min_lesion_contrast} times their "
                "background, not focal uptake, not reported."
            )
        if self.low_score:
            notes.append(
                f"{self.low_score} candidate(s) with a candidate score below {params.min_candidate_score} "
                "(pipelines.pet_quant.min_candidate_score), not reported."
            )
        if self.capped:
            notes.append(
                f"{self.capped + params.max_lesions} lesions found; only the {params.max_lesions} with the highest "
                f"candidate score are reported (pipelines.pet_quant.max_lesions), {self.capped} are not."
            )
        if self.scores:
            notes.append("Candidate scores (pipelines/petlesions/candidates.py): " + "; ".join(self.scores) + ".")
        return tuple(notes)


def detect_lesions(
    volume: PetVolume, params: PetLesionSettings, ct_hu: np.ndarray | None = None, anatomy: AnatomyMap | None = None
) -> Detection:
    """Automatic detection: foci of uptake above `detection_suv_threshold` (`pipelines.petlesions.uptake`),
    physiological uptake left out (`pipelines.petlesions.physiological`), the adaptive threshold of the method per
    remaining focus, lesions below `min_lesion_volume_ml` dropped, each candidate scored
    (`pipelines.petlesions.candidates`, with the CT's anatomy when the study has a CT), those below
    `min_candidate_score` dropped, at most `max_lesions` (highest score first), numbered by descending SUVmax."""
    if anatomy is not None:
        ct_hu = anatomy.ct_hu
    # Regions under 10 ml are never split: the watershed is there to part organs from lesions touching them.
    min_split = max(int(10.0 / volume.geometry.voxel_volume_ml), 8)
    floor = params.plateau_suv_factor * params.detection_suv_threshold
    foci, count = split_uptake(
        volume.suv, params.detection_suv_threshold, params.split_saddle_fraction, min_split, floor
    )
    if count == 0:
        return Detection(())
    index = np.arange(1, count + 1)
    voxel_ml = volume.geometry.voxel_volume_ml
    voxel_counts = ndimage.sum_labels(np.ones_like(foci), foci, index)
    kept = [int(i) for i, n in zip(index, voxel_counts) if n > 0]
    exclusions = physiological_regions(volume, foci, kept, params.physiological, ct_hu, floor)
    for label, exclusion in exclusions.items():
        logger.info(
            "series %s: focus taken for physiological uptake (%s): %s; not reported",
            volume.series_instance_uid,
            exclusion.organ,
            exclusion.reason,
        )
    kept = [label for label in kept if label not in exclusions]
    # Far too small to reach the minimum volume even before the threshold: not even candidates.
    kept = [label for label in kept if voxel_counts[label - 1] * voxel_ml >= min(params.min_lesion_volume_ml, 0.1)]
    lesions, low_contrast = _threshold_candidates(volume, params, foci, count, kept, set(), params.min_lesion_contrast)
    too_small = [lesion for lesion in lesions if lesion.measurements.metabolic_volume_ml < params.min_lesion_volume_ml]
    lesions = [lesion for lesion in lesions if lesion.measurements.metabolic_volume_ml >= params.min_lesion_volume_ml]
    scored = []
    for lesion in lesions:
        below = anatomy is None or anatomy.lung_z is None or lesion.measurements.centroid_mm[2] < anatomy.lung_z[0]
        candidate = candidate_score(
            lesion,
            volume.geometry,
            ct_hu,
            anatomy.body if anatomy else None,
            anatomy.bone if anatomy else None,
            anatomy.near_lungs if anatomy else None,
            below,
        )
        scored.append((replace(lesion, candidate_score=round(candidate.score, 3)), candidate.evidence))
    low_score = sum(1 for lesion, _ in scored if lesion.candidate_score < params.min_candidate_score)
    scored = [item for item in scored if item[0].candidate_score >= params.min_candidate_score]
    capped = max(len(scored) - params.max_lesions, 0)
    if capped:
        logger.warning(
            "series %s: %d lesions, the %d with the highest candidate score reported",
            volume.series_instance_uid,
            len(scored),
            params.max_lesions,
        )
    ranked = sorted(scored, key=lambda item: -item[0].candidate_score)[: params.max_lesions]
    ranked.sort(key=lambda item: -item[0].measurements.suv_max)
    lesions = _renumbered([lesion for lesion, _ in ranked])
    scores = tuple(
        f"Lesion {n}: {lesion.candidate_score:.2f}" + (f" ({', '.join(why)})" if why else "")
        for n, (lesion, why) in enumerate(ranked, start=1)
    )
    excluded = tuple(f"{e.organ} ({e.reason})" for e in exclusions.values())
    return Detection(lesions, excluded, len(kept), capped, len(too_small), low_contrast, low_score, scores)


def _renumbered(lesions: Sequence[Lesion]) -> tuple[Lesion, ...]:
    return tuple(
        replace(lesion, number=number, tracking_identifier=f"Lesion {number}")
        for number, lesion in enumerate(lesions, start=1)
    )


def segment_lesions(
    volume: PetVolume,
    params: PetLesionSettings,
    seeds: Sequence[ReaderSeed] | None = None,
    ct_hu: np.ndarray | None = None,
) -> tuple[Lesion, ...]:
    """Automatic detection (`detect_lesions`), or (with seeds) the semi-automatic mode around reader points."""
    if seeds is None:
        return detect_lesions(volume, params, ct_hu).lesions
    labels, count, nodes = seeded_candidates(volume, seeds, params)
    if count == 0:
        return ()
    kept = list(range(1, count + 1))  # a reader said each is a lesion: no size or organ rule overrules it
    return _renumbered(_threshold_candidates(volume, params, labels, count, kept, nodes)[0])


def _plateau_background(
    box_suv: np.ndarray, hot: np.ndarray, lesion_box: np.ndarray, spacing: np.ndarray, params: PetLesionSettings
) -> float | None:
    """The median SUV of the lesion's own voxels 10-20 mm from its hot (I70) core, when the lesion found with
    the outer background is mostly such uptake (more than four times the core) and that uptake is low-grade
    (below `plateau_suv_factor` times the detection threshold: avid muscle, lymphoid tissue). A warmer body
    around a hot spot is tumour and stays in the lesion (None)."""
    if int(lesion_box.sum()) <= 4 * int(hot.sum()):
        return None
    from_core = ndimage.distance_transform_edt(~hot, sampling=spacing)
    ring = lesion_box & (from_core > params.background_inner_mm) & (from_core <= params.background_outer_mm)
    if int(ring.sum()) < 8:
        return None
    level = float(np.median(box_suv[ring]))
    return level if level < params.plateau_suv_factor * params.detection_suv_threshold else None


def _threshold_candidates(
    volume: PetVolume,
    params: PetLesionSettings,
    labels: np.ndarray,
    count: int,
    kept: list[int],
    nodes: set[int],
    min_contrast: float = 0.0,
) -> tuple[list[Lesion], int]:
    """The method's adaptive threshold for each kept candidate (highest SUVmax first), never taking voxels of
    another candidate or focus (physiological ones included); candidates whose SUVmax is below `min_contrast`
    times their background are not lesions. Returns the lesions and how many candidates that rule rejected."""
    rejected = 0
    suv = volume.suv
    spacing = _array_spacing(volume.geometry)
    maxima = ndimage.maximum(suv, labels, np.arange(1, count + 1))
    kept = sorted(kept, key=lambda i: -maxima[i - 1])
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
        hot = _component_containing((box_suv >= params.i70_fraction * box_suv[seed]) & component, seed)
        i70 = float(box_suv[hot].mean())
        threshold = params.beta * i70 + background
        allowed = (distance_mm <= params.background_inner_mm) & ~claimed[box]
        allowed &= ~(detected[box] & ~component)  # never take voxels of another focus
        lesion_box = _component_containing((box_suv >= threshold) & allowed, seed)
        if not lesion_box.any():
            continue
        # A focus that is mostly low-grade uptake around a small hot core (a node on avid muscle): the uptake
        # around the core, not the tissue outside the whole focus, is this lesion's background.
        plateau = _plateau_background(box_suv, hot, lesion_box, spacing, params)
        if plateau is not None and plateau > background:
            background = plateau
            threshold = params.beta * i70 + background
            lesion_box = _component_containing((box_suv >= threshold) & allowed, seed)
        if box_suv[seed] < min_contrast * background:
            rejected += 1
            continue  # not focal: uptake hardly above its surroundings (muscle, inflammation, noise)
        claimed[box] |= lesion_box
        number = len(lesions) + 1
        lesions.append(
            _measured(volume, box, lesion_box, box_suv, threshold, i70, background, label in nodes, number, peak_kernel)
        )
    return lesions, rejected
