"""Physiological FDG uptake that automatic detection must not report as lesions. The rules look at each focus
of uptake (connected uptake split at clear dips, `pipelines.petlesions.uptake`), so that an organ and a lesion touching
it are judged separately. Our documented heuristics, each switchable and tunable in
`pipelines.pet_quant.physiological`; every exclusion is logged and listed in the SR with its reason.

- brain: a focus of at least `brain_min_ml` centred within `brain_from_top_mm` of the top of the field of
  view, or one of at least 30 ml touching the top slice (a head-and-neck field of view cuts the brain);
- myocardium: 30-600 ml and hollow in axial slices (ring around the blood pool, `myocardium_hollowness`); with
  the CT also a solid 60-800 ml focus lying between the two lungs;
- kidneys: two foci of 30-500 ml, within a factor 2.5 in volume, mirrored about the body's midline;
- urinary bladder: the most inferior focus of at least 30 ml within 60 mm of the midline;
The rules that rely on where a focus lies (brain, kidneys, bladder, head-and-neck pairs) apply only to a
field of view of at least 200 mm head to foot: a volume cropped around a tumour has no top, midline or
lowest organ to go by.
- ureters: tubes of at most 20 ml, 2.5 times longer than wide, running at least 25 mm head to foot;
- symmetric head-and-neck uptake (tonsils, salivary glands, vocal cords, muscles): in the head-and-neck
  zone (below the brain, above the lungs), two foci of at most 60 ml mirrored about the midline (within
  12 mm) with SUVmax within a factor `pair_max_ratio`, at most `pair_max_suv`, and volumes within a factor
  3 (bilateral nodes hotter than that are kept; cooler, similar and mirrored, they are taken for normal
  uptake); of a mirrored pair that is not similar,
  the weaker (at most 50 ml, SUVmax at most `pair_weaker_fraction` of its partner) is the normal side of an
  involved structure;
- diffuse organ uptake: a focus of at least 400 ml whose SUVmax stays below 1.6 times its mean (liver,
  spleen, marrow: no focal lesion in it); low-grade uptake: a focus of at least 10 ml whose SUVmax stays below
  `plateau_suv_factor` times the detection threshold (avid muscle, lymphoid tissue, salivary glands).

With the study's CT (same frame of reference, on the PET grid; only where it covers the focus):
- the brain must be enclosed by bone (skull), the bladder hold fluid;
- brown fat: a focus whose median CT number is fat (-190 to -30 HU);
- bowel: a focus below the lungs with gas (< -400 HU) in the 5 mm around it, in a field of view that
  reaches the abdomen.

The rules can remove a real lesion that looks like an organ (a large midline pelvic mass, a lesion in
brown fat, bilateral symmetric nodes); the log and the SR say what was excluded and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.imaging.geometry import index_to_patient, patient_to_index
from pipelines.petlesions.settings import PhysiologicalSettings
from pipelines.petlesions.types import PetVolume

SKULL_FRACTION = 0.15  # with CT: at least this much of the shell around the brain is bone
FLUID_HU = (-15.0, 25.0)  # with CT: median CT number of urine in the bladder region (soft tissue is 30-60)
POSITION_RULES_MIN_FOV_MM = 200.0  # organ rules that rely on where a focus lies in the body need this much
FAT_HU = (-190.0, -30.0)  # with CT: brown fat
GAS_HU = -400.0
PAIR_TOLERANCE_MM = 12.0  # mirrored: positions agree within this after reflection about the midline


@dataclass(frozen=True)
class Focus:
    label: int
    volume_ml: float
    centroid_mm: np.ndarray  # patient x (right to left), y (anterior to posterior), z (foot to head)
    extent_mm: np.ndarray  # x, y, z extents of the bounding box
    suv_max: float
    suv_mean: float
    hollowness: float  # slice-wise filled volume / volume - 1
    elongation: float  # ratio of the largest to the second-largest principal extent
    top_z_mm: float  # most superior voxel of the focus
    bottom_z_mm: float
    hot_bottom_z_mm: float  # most inferior voxel at 70 % or more of the focus' SUVmax (the organ, not its fringe)
    touches_top: bool  # reaches the most superior slice of the field of view
    ct_covered: bool = False  # the CT covers the focus
    median_hu: float | None = None
    bone_around: float | None = None  # fraction of a 10 mm shell around the focus that is bone (> 300 HU)
    gas_around: float | None = None  # fraction of a 5 mm shell that is gas (< -400 HU)


@dataclass(frozen=True)
class Exclusion:
    organ: str
    reason: str


def _shell(inside: np.ndarray, reach: np.ndarray) -> np.ndarray:
    structure = np.ones(tuple(2 * r + 1 for r in reach), dtype=bool)
    return ndimage.binary_dilation(inside, structure) & ~inside


def _foci(volume: PetVolume, labels: np.ndarray, wanted: list[int], ct_hu: np.ndarray | None) -> list[Focus]:
    geometry = volume.geometry
    voxel_ml = geometry.voxel_volume_ml
    spacing_zyx = np.asarray(geometry.spacing_mm[::-1])
    slices = ndimage.find_objects(labels)
    top_index = volume.suv.shape[0] - 1
    z_of = index_to_patient(geometry, np.array([[0, 0, 0], [top_index, 0, 0]]))[:, 2]
    top_is_last = z_of[1] > z_of[0]
    foci = []
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
        values = volume.suv[box][mask]
        touches = (box[0].stop - 1 == top_index) if top_is_last else (box[0].start == 0)
        focus = dict(
            label=label,
            volume_ml=count * voxel_ml,
            centroid_mm=points.mean(axis=0),
            extent_mm=extent,
            suv_max=float(values.max()),
            suv_mean=float(values.mean()),
            hollowness=filled / count - 1.0,
            elongation=elongation,
            top_z_mm=float(points[:, 2].max()),
            bottom_z_mm=float(points[:, 2].min()),
            hot_bottom_z_mm=float(points[values >= 0.7 * values.max(), 2].min()),
            touches_top=bool(touches),
        )
        if ct_hu is not None:
            hu = ct_hu[box][mask]
            covered = np.isfinite(hu)
            if covered.mean() >= 0.5:
                reach10 = np.maximum(np.round(10.0 / spacing_zyx).astype(int), 1)
                reach5 = np.maximum(np.round(5.0 / spacing_zyx).astype(int), 1)
                grown = tuple(slice(max(b.start - r, 0), b.stop + r) for b, r in zip(box, reach10))
                inside = labels[grown] == label
                ct_grown = ct_hu[grown]
                bone_shell = ct_grown[_shell(inside, reach10)]
                gas_shell = ct_grown[_shell(inside, reach5)]
                bone_shell, gas_shell = bone_shell[np.isfinite(bone_shell)], gas_shell[np.isfinite(gas_shell)]
                focus.update(
                    ct_covered=True,
                    median_hu=float(np.median(hu[covered])),
                    bone_around=float((bone_shell > 300).mean()) if bone_shell.size else 0.0,
                    gas_around=float((gas_shell < GAS_HU).mean()) if gas_shell.size else 0.0,
                )
        foci.append(Focus(**focus))
    return foci


def _lung_top_and_bottom(volume: PetVolume, ct_hu: np.ndarray | None) -> tuple[float, float] | None:
    """Head-to-foot extent of the lungs (the two largest enclosed air regions) on the CT, when it shows them."""
    if ct_hu is None:
        return None
    air = (ct_hu > -950) & (ct_hu < -500)
    labels, count = ndimage.label(air)
    if count == 0:
        return None
    edge = np.unique(
        np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    )
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
    inner = [i + 1 for i in np.argsort(sizes)[::-1] if i + 1 not in set(edge)][:2]
    if not inner or sizes[inner[0] - 1] * volume.geometry.voxel_volume_ml < 200:
        return None
    z = index_to_patient(volume.geometry, np.argwhere(np.isin(labels, inner)))[:, 2]
    return float(z.max()), float(z.min())


def _between_lungs(volume: PetVolume, ct_hu: np.ndarray, focus: Focus) -> bool:
    """Lung (-950..-500 HU) within 120 mm on both sides (left and right) of the focus' centroid."""
    centre = np.round(patient_to_index(volume.geometry, focus.centroid_mm)).astype(int)
    centre = np.clip(centre, 0, np.asarray(ct_hu.shape) - 1)
    row = ct_hu[centre[0], centre[1], :]
    reach = int(round(120.0 / volume.geometry.spacing_mm[0]))
    lung = (row > -950) & (row < -500)
    left = lung[max(centre[2] - reach, 0) : centre[2]]
    right = lung[centre[2] + 1 : centre[2] + 1 + reach]
    return bool(left.sum() >= 3 and right.sum() >= 3)


def physiological_regions(
    volume: PetVolume,
    labels: np.ndarray,
    candidates: list[int],
    settings: PhysiologicalSettings,
    ct_hu: np.ndarray | None = None,
    low_grade_suv: float = 0.0,
) -> dict[int, Exclusion]:
    """Focus label → the organ it was taken for and why. `ct_hu`: the study's CT on the PET grid, NaN where
    the CT does not reach. `low_grade_suv`: foci of at least 10 ml whose SUVmax stays below it are low-grade
    uptake (muscle, lymphoid tissue, glands), not lesions."""
    if not settings.enabled or not candidates:
        return {}
    foci = _foci(volume, labels, candidates, ct_hu)
    body = volume.suv > settings.body_suv
    body_points = index_to_patient(volume.geometry, np.argwhere(body[::4, ::4, ::4]) * 4) if body.any() else None
    midline_x = float(np.median(body_points[:, 0])) if body_points is not None else 0.0
    z_values = index_to_patient(volume.geometry, np.array([[0, 0, 0], [volume.suv.shape[0] - 1, 0, 0]]))[:, 2]
    top_z, bottom_z = float(z_values.max()), float(z_values.min())
    lungs = _lung_top_and_bottom(volume, ct_hu)
    # A cropped volume (a few centimetres around a tumour) has no top of the body, no midline, no most inferior
    # organ: the rules that rely on position apply only to a field of view of a real scan.
    positional = top_z - bottom_z >= POSITION_RULES_MIN_FOV_MM
    excluded: dict[int, Exclusion] = {}

    def exclude(focus: Focus, organ: str, why: str) -> None:
        excluded[focus.label] = Exclusion(organ, f"{why}; SUVmax {focus.suv_max:.1f}, {focus.volume_ml:.1f} ml")

    for focus in foci:
        skull_ok = focus.bone_around is None or focus.bone_around >= SKULL_FRACTION
        if (
            settings.brain
            and skull_ok
            and (
                (
                    focus.volume_ml >= settings.brain_min_ml
                    and top_z - focus.centroid_mm[2] <= settings.brain_from_top_mm
                )
                or (focus.touches_top and focus.volume_ml >= 30.0 and abs(focus.centroid_mm[0] - midline_x) <= 40)
            )
        ):
            exclude(
                focus,
                "brain",
                "large focus at the top of the field of view" + (", inside the skull" if focus.bone_around else ""),
            )
        elif (
            settings.myocardium and 30 <= focus.volume_ml <= 600 and focus.hollowness >= settings.myocardium_hollowness
        ):
            exclude(focus, "myocardium", f"ring-shaped in axial slices (hollowness {focus.hollowness:.2f})")
        elif (
            settings.myocardium
            and ct_hu is not None
            and focus.ct_covered
            and 60 <= focus.volume_ml <= 800
            and _between_lungs(volume, ct_hu, focus)
        ):
            exclude(focus, "myocardium", "solid focus of heart size between the lungs on CT")
        elif settings.ureters and focus.volume_ml <= 20 and focus.elongation >= 2.5 and focus.extent_mm[2] >= 25:
            exclude(focus, "ureter", f"tube running {focus.extent_mm[2]:.0f} mm head to foot")
        elif settings.brown_fat and focus.median_hu is not None and FAT_HU[0] <= focus.median_hu <= FAT_HU[1]:
            exclude(focus, "brown fat", f"in fat on CT (median {focus.median_hu:.0f} HU)")
        elif (
            settings.bowel
            and focus.gas_around is not None
            and focus.gas_around >= 0.05
            and lungs is not None
            and focus.centroid_mm[2] < lungs[1] - 30
        ):
            exclude(focus, "bowel", f"gas around it on CT ({100 * focus.gas_around:.0f} % of its rim), below the lungs")
        elif settings.diffuse_organs and focus.volume_ml >= 400 and focus.suv_max < 1.6 * focus.suv_mean:
            exclude(focus, "diffuse organ uptake", "large and without a focal peak (liver, spleen or marrow)")
        elif settings.diffuse_organs and focus.volume_ml >= 10 and focus.suv_max < low_grade_suv:
            exclude(
                focus,
                "low-grade uptake",
                f"at least 10 ml, SUVmax below {low_grade_suv:.2f} (muscle, lymphoid tissue, glands)",
            )
    remaining = [f for f in foci if f.label not in excluded]

    if settings.kidneys and positional:
        sized = [f for f in remaining if 30 <= f.volume_ml <= 500]
        for i, first in enumerate(sized):
            for second in sized[i + 1 :]:
                if first.label in excluded or second.label in excluded:
                    continue
                ratio = max(first.volume_ml, second.volume_ml) / min(first.volume_ml, second.volume_ml)
                centre_x = (first.centroid_mm[0] + second.centroid_mm[0]) / 2.0
                apart = abs(first.centroid_mm - second.centroid_mm)
                if ratio <= 2.5 and abs(centre_x - midline_x) <= 40 and apart[0] >= 80 and max(apart[1:]) <= 50:
                    exclude(first, "kidney", "one of a mirrored pair of kidney size")
                    exclude(second, "kidney", "one of a mirrored pair of kidney size")

    if settings.head_and_neck_pairs and positional:
        brain = [f for f in foci if excluded.get(f.label, Exclusion("", "")).organ == "brain"]
        upper = min(f.hot_bottom_z_mm for f in brain) if brain else top_z
        lower = lungs[0] if lungs is not None else upper - settings.head_and_neck_depth_mm
        zone = [f for f in foci if f.label not in excluded and lower <= f.centroid_mm[2] <= upper and f.volume_ml <= 60]
        _pairs(zone, midline_x, settings, exclude)

    if settings.bladder and positional:
        pelvic = [
            f
            for f in foci
            if f.label not in excluded
            and f.volume_ml >= 30
            and abs(f.centroid_mm[0] - midline_x) <= 60
            and (f.median_hu is None or FLUID_HU[0] <= f.median_hu <= FLUID_HU[1])
            and (lungs is None or f.centroid_mm[2] < lungs[1] - 150)
        ]
        if pelvic:
            lowest = min(pelvic, key=lambda f: f.centroid_mm[2])
            below = [f for f in foci if f.label not in excluded and f.volume_ml >= 30]
            if (
                lowest.centroid_mm[2] <= min(f.centroid_mm[2] for f in below)
                and lowest.centroid_mm[2] < (top_z + bottom_z) / 2
            ):
                fluid = f", fluid on CT (median {lowest.median_hu:.0f} HU)" if lowest.median_hu is not None else ""
                exclude(lowest, "urinary bladder", "most inferior midline focus of bladder size" + fluid)
    _faint_neighbours(volume, labels, foci, excluded, settings)
    return excluded


def _faint_neighbours(
    volume: PetVolume,
    labels: np.ndarray,
    foci: list[Focus],
    excluded: dict[int, Exclusion],
    settings: PhysiologicalSettings,
) -> None:
    """A small, faint focus (at most 2 ml, SUVmax at most `faint_suv`) within 10 mm of an organ just left out
    is a piece of that organ (a ureter sampled into beads, the edge of a kidney or of the bladder)."""
    organs = [f for f in foci if f.label in excluded]
    if not organs:
        return
    spacing_zyx = np.asarray(volume.geometry.spacing_mm[::-1])
    reach = np.maximum(np.round(10.0 / spacing_zyx).astype(int), 1)
    near = ndimage.binary_dilation(
        np.isin(labels, [f.label for f in organs]), np.ones(tuple(2 * reach + 1), dtype=bool)
    )
    for focus in foci:
        if focus.label in excluded or focus.volume_ml > 2.0 or focus.suv_max > settings.faint_suv:
            continue
        touching = np.unique(labels[near & (labels == focus.label)])
        if touching.size:
            nearest = min(organs, key=lambda o: float(np.linalg.norm(o.centroid_mm - focus.centroid_mm)))
            organ = excluded[nearest.label].organ
            excluded[focus.label] = Exclusion(
                organ, f"small faint focus beside it (SUVmax {focus.suv_max:.1f}, {focus.volume_ml:.1f} ml)"
            )


def _pairs(
    zone: list[Focus], midline_x: float, settings: PhysiologicalSettings, exclude: Callable[[Focus, str, str], None]
) -> None:
    """Mirrored foci in the head and neck: tonsils, salivary glands, vocal cords, muscles."""
    used: set[int] = set()
    candidates = []
    for i, a in enumerate(zone):
        for b in zone[i + 1 :]:
            offset_a, offset_b = a.centroid_mm[0] - midline_x, b.centroid_mm[0] - midline_x
            if offset_a * offset_b >= 0 or min(abs(offset_a), abs(offset_b)) < 4:
                continue  # not on opposite sides
            mirror = abs(offset_a + offset_b)
            apart = abs(a.centroid_mm[1:] - b.centroid_mm[1:])
            if mirror <= PAIR_TOLERANCE_MM and max(apart) <= PAIR_TOLERANCE_MM:
                candidates.append((mirror + float(max(apart)), a, b))
    for _, a, b in sorted(candidates, key=lambda item: item[0]):
        if a.label in used or b.label in used:
            continue
        strong, weak = (a, b) if a.suv_max >= b.suv_max else (b, a)
        distance = abs(a.centroid_mm[0] - midline_x) + abs(b.centroid_mm[0] - midline_x)
        site = "vocal cords" if distance / 2 < 12 else "tonsils" if distance / 2 < 30 else "salivary glands"
        similar = (
            strong.suv_max / weak.suv_max <= settings.pair_max_ratio
            and max(a.volume_ml, b.volume_ml) / min(a.volume_ml, b.volume_ml) <= 3.0
        )
        if similar:
            for focus in (a, b):
                exclude(
                    focus,
                    f"symmetric head-and-neck uptake ({site} or muscles)",
                    "one of a mirrored pair of similar uptake",
                )
            used |= {a.label, b.label}
        elif weak.volume_ml <= 50 and weak.suv_max <= settings.pair_weaker_fraction * strong.suv_max:
            exclude(
                weak,
                f"symmetric head-and-neck uptake ({site})",
                "normal side of a mirrored pair whose other side is a lesion",
            )
            used.add(weak.label)
