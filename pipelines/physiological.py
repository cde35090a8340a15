"""Physiological FDG uptake that automatic detection must not report as lesions: brain, myocardium,
kidneys, urinary bladder and ureters. Rules on the shape and position of each candidate region (our
documented heuristics, each switchable and tunable in `pipelines.pet_quant.physiological`):

- brain: a region of at least `brain_min_ml` whose centroid lies within `brain_from_top_mm` of the top
  (most superior slice) of the field of view;
- myocardium: 30–600 ml and hollow in axial slices (a ring around the blood pool): the slice-wise filled
  region is at least `myocardium_hollowness` (20 %) larger than the region itself;
- kidneys: two regions of 30–500 ml, within a factor 2.5 of each other's volume, mirrored about the body's
  midline (centroids' mean within 40 mm of it, at least 80 mm apart left-right, within 50 mm in the other
  two directions);
- bladder: the most inferior region of at least 30 ml whose centroid is within 50 mm of the midline;
- ureters: tubes: regions of at most 20 ml, at least 2.5 times longer along their main axis than across,
  running at least 25 mm head to foot.

With the study's CT in the same frame of reference (resampled onto the PET grid) two rules are
confirmed on it: the brain must be enclosed by bone (skull) and the bladder must hold fluid. The rules
can remove a real lesion that looks like an organ (a large midline pelvic mass, say); the log lists what
was excluded and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from immunode.config import PhysiologicalSettings
from pipelines.geometry import index_to_patient
from pipelines.types import PetVolume

SKULL_FRACTION = 0.15  # with CT: at least this much of the shell around the brain is bone
FLUID_HU = (-20.0, 30.0)  # with CT: mean CT number of urine in the bladder region


@dataclass(frozen=True)
class Region:
    label: int
    volume_ml: float
    centroid_mm: np.ndarray  # patient x (right to left), y (anterior to posterior), z (foot to head)
    extent_mm: np.ndarray  # x, y, z extents of the bounding box
    hollowness: float  # slice-wise filled volume / volume - 1
    elongation: float  # ratio of the largest to the second-largest principal extent
    mean_hu: float | None = None  # mean CT number inside the region, when a CT is available
    bone_around: float | None = None  # fraction of a 10 mm shell around the region that is bone (> 300 HU)


def _regions(volume: PetVolume, labels: np.ndarray, wanted: list[int], ct_hu: np.ndarray | None) -> list[Region]:
    geometry = volume.geometry
    voxel_ml = geometry.voxel_volume_ml
    slices = ndimage.find_objects(labels)
    regions = []
    for label in wanted:
        box = slices[label - 1]
        mask = labels[box] == label
        indices = np.argwhere(mask) + np.array([s.start for s in box])
        points = index_to_patient(geometry, indices)
        filled = sum(int(ndimage.binary_fill_holes(plane).sum()) for plane in mask)
        count = int(mask.sum())
        spread = np.sort(np.linalg.eigvalsh(np.cov(points.T))) if count > 3 else np.ones(3)
        elongation = float(np.sqrt(spread[2] / max(spread[1], 1e-6)))
        extent = np.ptp(points, axis=0) + np.asarray(geometry.spacing_mm)
        mean_hu = bone_around = None
        if ct_hu is not None:
            mean_hu = float(ct_hu[box][mask].mean())
            reach = np.maximum(np.round(10.0 / np.asarray(geometry.spacing_mm[::-1])).astype(int), 1)
            grown = tuple(slice(max(b.start - r, 0), b.stop + r) for b, r in zip(box, reach))
            inside = labels[grown] == label
            shell = ndimage.binary_dilation(inside, iterations=int(reach.max())) & ~inside
            bone_around = float((ct_hu[grown][shell] > 300).mean()) if shell.any() else 0.0
        regions.append(
            Region(
                label,
                count * voxel_ml,
                points.mean(axis=0),
                extent,
                filled / count - 1.0,
                elongation,
                mean_hu,
                bone_around,
            )
        )
    return regions


def physiological_regions(
    volume: PetVolume,
    labels: np.ndarray,
    candidates: list[int],
    settings: PhysiologicalSettings,
    ct_hu: np.ndarray | None = None,
) -> dict[int, str]:
    """Candidate label → the organ it was taken for. With the CT on the PET grid, the brain must also be
    enclosed by bone (skull) and the bladder hold fluid."""
    if not settings.enabled or not candidates:
        return {}
    regions = _regions(volume, labels, candidates, ct_hu)
    body = volume.suv > settings.body_suv
    body_points = index_to_patient(volume.geometry, np.argwhere(body[::4, ::4, ::4]) * 4) if body.any() else None
    midline_x = float(np.median(body_points[:, 0])) if body_points is not None else 0.0
    z_values = index_to_patient(volume.geometry, np.array([[0, 0, 0], [volume.suv.shape[0] - 1, 0, 0]]))[:, 2]
    top_z = float(z_values.max())
    excluded: dict[int, str] = {}
    for region in regions:
        if (
            settings.brain
            and region.volume_ml >= settings.brain_min_ml
            and top_z - region.centroid_mm[2] <= settings.brain_from_top_mm
            and (region.bone_around is None or region.bone_around >= SKULL_FRACTION)
        ):
            excluded[region.label] = "brain"
        elif (
            settings.myocardium
            and 30 <= region.volume_ml <= 600
            and region.hollowness >= settings.myocardium_hollowness
        ):
            excluded[region.label] = "myocardium"
        elif settings.ureters and region.volume_ml <= 20 and region.elongation >= 2.5 and region.extent_mm[2] >= 25:
            excluded[region.label] = "ureter"
    remaining = [r for r in regions if r.label not in excluded]
    if settings.kidneys:
        sized = [r for r in remaining if 30 <= r.volume_ml <= 500]
        for i, first in enumerate(sized):
            for second in sized[i + 1 :]:
                if first.label in excluded or second.label in excluded:
                    continue
                ratio = max(first.volume_ml, second.volume_ml) / min(first.volume_ml, second.volume_ml)
                centre_x = (first.centroid_mm[0] + second.centroid_mm[0]) / 2.0
                apart = abs(first.centroid_mm - second.centroid_mm)
                if ratio <= 2.5 and abs(centre_x - midline_x) <= 40 and apart[0] >= 80 and max(apart[1:]) <= 50:
                    excluded[first.label] = excluded[second.label] = "kidney"
    if settings.bladder:
        pelvic = [
            r
            for r in regions
            if r.label not in excluded
            and r.volume_ml >= 30
            and abs(r.centroid_mm[0] - midline_x) <= 50
            and (r.mean_hu is None or FLUID_HU[0] <= r.mean_hu <= FLUID_HU[1])
        ]
        if pelvic:
            lowest = min(pelvic, key=lambda r: r.centroid_mm[2])
            if lowest.centroid_mm[2] <= min(r.centroid_mm[2] for r in regions if r.label not in excluded):
                excluded[lowest.label] = "urinary bladder"
    return excluded
