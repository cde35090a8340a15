"""Anatomical site and organ of lesions from the CT of the same study (same frame of reference), coded only
where the CT shows the evidence; otherwise no site is given (a radiologist would rather read none than a wrong one).

The CT is resampled onto the PET grid (NaN where it does not reach). What is read from it:
- body: tissue above -400 HU, opened in-plane (the table is thin), connected regions of at least 200 ml, holes
  filled slice by slice (lungs and bowel gas are inside the body); on each slice the largest body region is the trunk
  (or the head), the others limbs;
- lungs: regions of air density (below -400 HU) inside the body whose median is that of lung parenchyma
  (-950 to -600 HU: not bowel or airway gas, which is below -950), of lung size (each at least `LUNG_MIN_ML`,
  with an axial section of at least `LUNG_MIN_AREA_CM2`), not cut by the edge of the CT's field (a crop around
  a limb never shows a lung); at most the two largest, nodules (holes) filled;
- bony pelvis: slices below the lungs where the trunk holds bone (> 200 HU) on both sides of the midline, at
  least 50 mm from it, each side at least `PELVIS_MIN_BONE_CM2`; legs: below it, the body parts in two regions of
  similar size each holding bone.
Sites: "lung" in or within 5 mm of a lung; "thorax" in the trunk at the lungs' level; "head and neck" in the trunk
above the lungs when their apices lie inside the CT's field; "abdomen" in the trunk below the lungs, above the bony
pelvis when the CT shows it, else at most `ABDOMEN_BELOW_LUNGS_MM` below the lung bases; "pelvis" in the trunk at
the bony pelvis' level; "lower limb" in one of the legs; "upper limb" in a body region beside the trunk at or
above the pelvis. Everything else (a cropped CT, a lesion outside the CT or the body) gets no site, with the reason.
Organs (RECIST "two per organ"): "lung" as above, "bone" when most of the lesion lies in bone (cortex and the
marrow it encloses); otherwise the CT does not tell the organ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.errors import SeriesNotUsable
from pipelines.imaging.geometry import index_to_patient, patient_to_index, to_sitk
from pipelines.imaging.series import geometry_order, read_headers
from pipelines.petlesions.types import Lesion, PetVolume
from pipelines.types import VolumeGeometry

logger = logging.getLogger(__name__)

LUNG_MARGIN_MM = 5.0
LUNG_HU = (-950.0, -600.0)  # median of lung parenchyma (bowel and airway gas lie below -950)
LUNG_MIN_ML = 50.0
LUNG_MIN_AREA_CM2 = 20.0
BODY_HU = -400.0
BONE_HU = 200.0
MARROW_MAX_CM2 = 15.0  # holes in bone up to this size (per slice) are marrow, not the space a rib cage encloses
PELVIS_BELOW_LUNGS_MM = 80.0  # the bony pelvis lies at least this far below the lung bases (lower ribs lie higher)
PELVIS_LATERAL_MM = 50.0
PELVIS_MIN_BONE_CM2 = 3.0
ABDOMEN_BELOW_LUNGS_MM = 150.0  # without a bony pelvis on the CT: the abdomen certainly reaches this far
LIMB_MIN_CM2 = 10.0
BODY_PART_MIN_ML = 200.0


@dataclass(frozen=True)
class Site:
    name: str  # "" when the CT does not support a site
    evidence: str  # what supports it, or why none is given


def load_ct_on_pet_grid(paths: Sequence[Path], pet: VolumeGeometry) -> np.ndarray:
    """CT in HU resampled (linearly) onto the PET voxel grid; NaN where the CT does not reach (a CT that
    covers less than the PET must not pass for air, or for anything else)."""
    headers = read_headers(paths)
    datasets = [ds for _, ds in headers]
    order, geometry = geometry_order(datasets)
    stack = np.empty(geometry.shape, dtype=np.float32)
    for index, position in enumerate(order):
        ds = datasets[position]
        stack[index] = ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1) + float(
            ds.get("RescaleIntercept", 0) or 0
        )
    reference = to_sitk(np.zeros(pet.shape, dtype=np.float32), pet)
    resampled = sitk.Resample(to_sitk(stack, geometry), reference, sitk.Transform(), sitk.sitkLinear, np.nan)
    return sitk.GetArrayFromImage(resampled)


def _disk(reach: np.ndarray) -> np.ndarray:
    rows, columns = np.ogrid[-reach[0] : reach[0] + 1, -reach[1] : reach[1] + 1]
    return ((rows / max(reach[0], 1)) ** 2 + (columns / max(reach[1], 1)) ** 2 <= 1.0)[None]


class AnatomyMap:
    """What the CT shows, on the PET grid: body, trunk and limbs per slice, lungs, bone, the bony pelvis."""

    def __init__(self, ct_hu: np.ndarray, geometry: VolumeGeometry) -> None:
        self.geometry = geometry
        self.ct_hu = ct_hu  # on the PET grid, NaN where the CT does not reach
        self.covered = np.isfinite(ct_hu)
        hu = np.where(self.covered, ct_hu, -1000.0)
        spacing = np.asarray(geometry.spacing_mm[::-1], dtype=float)  # slice, row, column
        self._pixel_cm2 = float(spacing[1] * spacing[2]) / 100.0
        self.z_of_slice = index_to_patient(
            geometry, np.column_stack([np.arange(ct_hu.shape[0]), np.zeros((ct_hu.shape[0], 2))])
        )[:, 2]
        covered_z = self.z_of_slice[self.covered.any(axis=(1, 2))]
        self.ct_top_z = float(covered_z.max()) if covered_z.size else -np.inf
        # In-plane edge of the CT's field: the image border and the border of its coverage.
        field_edge = np.zeros(ct_hu.shape, dtype=bool)
        field_edge[:, [0, -1], :] = True
        field_edge[:, :, [0, -1]] = True
        field_edge |= ndimage.binary_dilation(~self.covered, np.ones((1, 3, 3), dtype=bool))
        self.field_edge = field_edge & self.covered
        reach = np.maximum(np.round(4.0 / spacing[1:]).astype(int), 1)
        tissue = ndimage.binary_opening(hu > BODY_HU, _disk(reach))
        labels, count = ndimage.label(tissue)
        if count:  # the body and its limbs; not the bits of table or blanket that survive the opening
            sizes = ndimage.sum_labels(tissue, labels, np.arange(1, count + 1)) * geometry.voxel_volume_ml
            tissue = np.isin(labels, np.flatnonzero(sizes >= BODY_PART_MIN_ML) + 1)
        self.body = np.stack([ndimage.binary_fill_holes(plane) for plane in tissue])
        self.trunk, self.limbs = self._trunk_and_limbs()
        self.lungs, self.lung_note = self._lungs(hu)
        margin = np.maximum(np.round(LUNG_MARGIN_MM / spacing).astype(int), 1)
        self.near_lungs = ndimage.binary_dilation(self.lungs, np.ones(2 * margin + 1, dtype=bool))
        if self.lungs.any():
            z = self.z_of_slice[self.lungs.any(axis=(1, 2))]
            self.lung_z: tuple[float, float] | None = (float(z.min()), float(z.max()))
        else:
            self.lung_z = None
        self.bone = self._bone(hu)
        self.pelvis_z, self.legs = self._pelvis_and_legs()

    def _trunk_and_limbs(self) -> tuple[np.ndarray, np.ndarray]:
        trunk = np.zeros(self.body.shape, dtype=bool)
        limbs = np.zeros(self.body.shape, dtype=np.int16)  # per slice: 0 none, n the n-th other body region
        for k, plane in enumerate(self.body):
            labels, count = ndimage.label(plane)
            if not count:
                continue
            areas = ndimage.sum_labels(plane, labels, np.arange(1, count + 1)) * self._pixel_cm2
            order = np.argsort(areas)[::-1]
            trunk[k] = labels == order[0] + 1
            for rank, index in enumerate(order[1:], start=1):
                if areas[index] >= LIMB_MIN_CM2:
                    limbs[k][labels == index + 1] = rank
        return trunk, limbs

    def _lungs(self, hu: np.ndarray) -> tuple[np.ndarray, str]:
        air = (hu < BODY_HU) & self.body & self.covered
        labels, count = ndimage.label(air)
        if not count:
            return np.zeros(hu.shape, dtype=bool), "no air inside the body on the CT"
        index = np.arange(1, count + 1)
        voxel_ml = self.geometry.voxel_volume_ml
        volumes = ndimage.sum_labels(air, labels, index) * voxel_ml
        cut = set(np.unique(labels[self.field_edge & air]).tolist())
        accepted, rejected = [], []
        for label in index[np.argsort(volumes)[::-1]][:8]:
            component = labels == label
            median = float(np.median(hu[component]))
            area = float(component.sum(axis=(1, 2)).max()) * self._pixel_cm2
            volume = float(volumes[label - 1])
            if volume < LUNG_MIN_ML:
                break
            if label in cut:
                rejected.append(f"{volume:.0f} ml of air cut by the edge of the CT's field")
            elif not LUNG_HU[0] <= median <= LUNG_HU[1]:
                rejected.append(f"{volume:.0f} ml of gas of median {median:.0f} HU (not lung parenchyma)")
            elif area < LUNG_MIN_AREA_CM2:
                rejected.append(f"{volume:.0f} ml of air of at most {area:.0f} cm² per slice (not lung size)")
            else:
                accepted.append((label, volume, median))
            if len(accepted) == 2:
                break
        lungs = np.isin(labels, [label for label, _, _ in accepted])
        lungs = np.stack([ndimage.binary_fill_holes(plane) for plane in lungs])  # a nodule is a hole in its lung
        if accepted:
            note = "lungs on the CT: " + ", ".join(f"{v:.0f} ml (median {m:.0f} HU)" for _, v, m in accepted)
        else:
            note = "no lung on the CT" + (f" ({'; '.join(rejected)})" if rejected else "")
        return lungs, note

    def _bone(self, hu: np.ndarray) -> np.ndarray:
        """Bone and the marrow it encloses: holes of at most `MARROW_MAX_CM2` per slice filled."""
        bone = (hu > BONE_HU) & self.body
        filled = np.zeros_like(bone)
        for k, plane in enumerate(bone):
            if not plane.any():
                continue
            holes = ndimage.binary_fill_holes(plane) & ~plane
            labels, count = ndimage.label(holes)
            small = np.zeros_like(plane)
            if count:
                areas = ndimage.sum_labels(holes, labels, np.arange(1, count + 1)) * self._pixel_cm2
                small = np.isin(labels, np.flatnonzero(areas <= MARROW_MAX_CM2) + 1)
            filled[k] = plane | small
        return filled

    def _pelvis_and_legs(self) -> tuple[tuple[float, float] | None, np.ndarray]:
        """The bony pelvis' head-to-foot extent, and the legs below it (two body regions of similar size, each
        holding bone)."""
        legs = np.zeros(self.body.shape, dtype=bool)
        if self.lung_z is None:
            return None, legs
        spacing_x = self.geometry.spacing_mm[0]
        pelvic = []
        for k in range(self.body.shape[0]):
            if self.z_of_slice[k] > self.lung_z[0] - PELVIS_BELOW_LUNGS_MM or not self.trunk[k].any():
                continue
            columns = np.flatnonzero(self.trunk[k].any(axis=0))
            midline = (columns.min() + columns.max()) / 2.0
            offset = (np.nonzero(self.bone[k] & self.trunk[k])[1] - midline) * spacing_x
            left = float((offset <= -PELVIS_LATERAL_MM).sum()) * self._pixel_cm2
            right = float((offset >= PELVIS_LATERAL_MM).sum()) * self._pixel_cm2
            if min(left, right) >= PELVIS_MIN_BONE_CM2:
                pelvic.append(k)
        if not pelvic:
            return None, legs
        z = self.z_of_slice[pelvic]
        bottom = float(z.min())
        for k in np.flatnonzero(self.z_of_slice < bottom):
            first, second = self.trunk[k], self.limbs[k] == 1
            areas = (int(first.sum()), int(second.sum()))
            similar = min(areas) >= 0.5 * max(areas) > 0
            if similar and (self.bone[k] & first).any() and (self.bone[k] & second).any():
                legs[k] = first | second
        return (bottom, float(z.max())), legs

    def _index(self, centroid_mm: Sequence[float]) -> tuple[int, ...] | None:
        index = np.round(patient_to_index(self.geometry, np.asarray(centroid_mm))).astype(int)
        if np.any(index < 0) or np.any(index >= np.asarray(self.body.shape)) or not self.covered[tuple(index)]:
            return None
        return tuple(int(i) for i in index)

    def site(self, centroid_mm: Sequence[float]) -> Site:
        """The lesion's site where the CT supports one, else no site with the reason."""
        index = self._index(centroid_mm)
        if index is None:
            return Site("", "outside the CT's coverage")
        if not self.body[index]:
            return Site("", "outside the body outline on the CT")
        if self.near_lungs[index]:
            return Site("lung", f"in or within {LUNG_MARGIN_MM:.0f} mm of a lung; {self.lung_note}")
        if self.lung_z is None:
            return Site("", f"the CT shows no lungs to orient by ({self.lung_note})")
        z = float(centroid_mm[2])
        bottom, top = self.lung_z
        if self.legs[index]:
            return Site("lower limb", "in one of the two legs below the bony pelvis on the CT")
        if not self.trunk[index]:
            lowest = self.pelvis_z[1] if self.pelvis_z is not None else bottom - ABDOMEN_BELOW_LUNGS_MM
            if self.limbs[index] and z >= lowest:
                return Site("upper limb", "in a body region beside the trunk, above the pelvis, on the CT (an arm)")
            return Site("", "in a body region beside the trunk that the CT does not identify")
        if z > top:
            if top < self.ct_top_z - 10.0:
                return Site("head and neck", "in the trunk above the lung apices seen on the CT")
            return Site("", "above the lungs, whose apices lie beyond the CT's field")
        if z >= bottom:
            return Site("thorax", f"in the trunk at the level of the lungs ({self.lung_note})")
        if self.pelvis_z is not None and self.pelvis_z[0] <= z <= self.pelvis_z[1]:
            return Site("pelvis", "in the trunk at the level of the bony pelvis on the CT")
        upper = self.pelvis_z[1] if self.pelvis_z is not None else bottom - ABDOMEN_BELOW_LUNGS_MM
        if z > upper:
            where = "above the bony pelvis" if self.pelvis_z is not None else (
                f"within {ABDOMEN_BELOW_LUNGS_MM:.0f} mm below them (no bony pelvis seen)"
            )
            return Site("abdomen", f"in the trunk below the lung bases, {where}")
        return Site("", "below the lungs, where the CT shows no bony pelvis to orient by")

    def organ(self, lesion: Lesion) -> Site:
        """The lesion's organ where the CT tells it: lung, or bone; else "" (the CT does not tell)."""
        index = self._index(lesion.measurements.centroid_mm)
        if index is None:
            return Site("", "outside the CT's coverage")
        if self.near_lungs[index]:
            return Site("lung", "in or within 5 mm of a lung on the CT")
        in_bone = float(self.bone[lesion.box()][lesion.mask].mean())
        if in_bone >= 0.5:
            return Site("bone", f"{100 * in_bone:.0f} % of its voxels in bone on the CT")
        return Site("", "the CT does not tell its organ")


def anatomy_for(pet: PetVolume, ct_paths: Sequence[Path]) -> AnatomyMap | None:
    if not ct_paths:
        return None
    try:
        return AnatomyMap(load_ct_on_pet_grid(ct_paths, pet.geometry), pet.geometry)
    except SeriesNotUsable as error:
        logger.warning("CT not usable for anatomical locations: %s", error)
        return None
