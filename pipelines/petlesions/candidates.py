"""A per-candidate score for automatic lesion detection: how much the uptake and, where the study has one, the CT
look like a lesion rather than normal uptake. Automatic findings are candidates for a reader (the PET method is
reader-selected lesions); the score ranks them, decides which are kept when there are more than
`max_lesions`, and (with `min_candidate_score`) which are not offered at all.

Our documented choice, set from what FDG readers look at, not fitted to any data set (none with enough labelled
whole-body studies is available here; see docs/pet-lesion-detection.md):
- uptake: the geometric mean of focality, (SUVmax / background − 1.5) / 2.5, and intensity, (SUVmax − 2) / 4,
  each clipped to [0.05, 1] (a contrast of 4 and an SUVmax of 6 are fully lesion-like);
- with the CT (only where it covers the candidate), multiplied by the evidence of normal uptake:
  - outside the body outline (misregistration, an artefact): × 0.1;
  - bowel: gas (< −400 HU) inside the candidate or in 10 % of a 5 mm rim, away from the lungs: × 0.3; uptake along
    a tube (elongation ≥ 2.5 and ≥ 30 mm long) below or without lungs: × 0.5;
  - marrow: mostly in bone (median ≥ 100 HU, or half its voxels in bone) with low-grade uptake (SUVmax < 5, contrast
    < 3.5), as red marrow and degenerative bone show: × 0.4 (a bone metastasis is rarely that faint);
  - muscle: soft tissue (median 20–80 HU), elongated (≥ 2) and low-contrast (< 3): × 0.5.
The score and the reasons for each factor travel with the lesion (`Lesion.candidate_score`, `Candidate.evidence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.imaging.geometry import index_to_patient
from pipelines.petlesions.types import Lesion
from pipelines.types import VolumeGeometry

GAS_HU = -400.0
FLOOR = 0.05


@dataclass(frozen=True)
class Candidate:
    score: float  # 0-1
    evidence: tuple[str, ...]  # each factor that lowered it, in words


def _clip(value: float) -> float:
    return float(min(max(value, FLOOR), 1.0))


def _elongation(lesion: Lesion, geometry: VolumeGeometry) -> tuple[float, float]:
    """Ratio of the largest to the second principal extent, and the length (mm) along the largest."""
    points = index_to_patient(geometry, np.argwhere(lesion.mask) + np.asarray(lesion.offset))
    if len(points) < 4:
        return 1.0, 0.0
    values, vectors = np.linalg.eigh(np.cov(points.T))
    spread = np.sort(values)
    projected = points @ vectors[:, int(np.argmax(values))]
    return float(np.sqrt(spread[2] / max(spread[1], 1e-6))), float(np.ptp(projected))


def candidate_score(
    lesion: Lesion,
    geometry: VolumeGeometry,
    ct_hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
    bone: np.ndarray | None = None,
    near_lungs: np.ndarray | None = None,
    below_lungs: bool = True,
) -> Candidate:
    """The candidate's score and what lowered it. `ct_hu`, `body`, `bone`, `near_lungs`: the CT's HU and masks on
    the PET grid (pipelines.petlesions.anatomy), when the study has a CT; `below_lungs`: the candidate lies below
    the lungs, or the CT shows none."""
    m = lesion.measurements
    contrast = m.suv_max / max(m.background_suv, 1e-6)
    score = float(np.sqrt(_clip((contrast - 1.5) / 2.5) * _clip((m.suv_max - 2.0) / 4.0)))
    evidence: list[str] = []
    if ct_hu is None:
        return Candidate(score, ())
    box = lesion.box()
    hu = ct_hu[box][lesion.mask]
    covered = np.isfinite(hu)
    if covered.mean() < 0.5:
        return Candidate(score, ("the CT does not cover it",))
    median = float(np.median(hu[covered]))

    def lower(factor: float, why: str) -> None:
        nonlocal score
        score *= factor
        evidence.append(f"{why} (x {factor:g})")

    if body is not None and float(body[box][lesion.mask].mean()) < 0.5:
        lower(0.1, "mostly outside the body outline on the CT")
    in_lung = near_lungs is not None and bool(near_lungs[box][lesion.mask].any())
    spacing = np.asarray(geometry.spacing_mm[::-1])
    reach = np.maximum(np.round(5.0 / spacing).astype(int), 1)
    grown = tuple(slice(max(b.start - r, 0), b.stop + r) for b, r in zip(box, reach))
    inside = np.zeros(ct_hu[grown].shape, dtype=bool)
    inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))
    inside[inner] = lesion.mask
    rim = ndimage.binary_dilation(inside, np.ones(tuple(2 * reach + 1), dtype=bool)) & ~inside
    rim_hu = ct_hu[grown][rim]
    rim_hu = rim_hu[np.isfinite(rim_hu)]
    gas_rim = float((rim_hu < GAS_HU).mean()) if rim_hu.size else 0.0
    gas_inside = float((hu[covered] < GAS_HU).mean())
    if not in_lung and (gas_inside > 0.02 or gas_rim >= 0.1):
        lower(0.3, f"gas on the CT in or around it ({100 * max(gas_inside, gas_rim):.0f} %): bowel")
    elongation, length = _elongation(lesion, geometry)
    if below_lungs and not in_lung and elongation >= 2.5 and length >= 30.0:
        lower(0.5, f"uptake along a tube ({length:.0f} mm, elongation {elongation:.1f}): bowel or ureter")
    in_bone = float(bone[box][lesion.mask].mean()) if bone is not None else 0.0
    if (median >= 100.0 or in_bone >= 0.5) and m.suv_max < 5.0 and contrast < 3.5:
        lower(0.4, f"faint uptake in bone (median {median:.0f} HU, {100 * in_bone:.0f} % in bone): marrow")
    elif 20.0 <= median <= 80.0 and elongation >= 2.0 and contrast < 3.0:
        lower(0.5, f"faint, elongated uptake in soft tissue (median {median:.0f} HU): muscle")
    return Candidate(float(score), tuple(evidence))
