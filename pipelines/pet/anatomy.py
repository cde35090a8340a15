"""Coarse anatomical location of lesions from the CT of the same study (same frame of reference).

The CT is resampled onto the PET grid. Lungs are the two largest air-density regions (-950 to -500 HU)
that do not touch the edge of the image (outside air does), with their holes (nodules) filled. A lesion
whose centroid lies in or within 5 mm of a lung is "lung"; at the lungs' head-to-foot level otherwise
"thorax"; above them "head and neck"; below them "abdomen" down to `PELVIS_BELOW_LUNGS_MM` under the lung
bases, "pelvis" lower still (a documented, coarse rule). Without a usable CT the location is not given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.errors import SeriesNotUsable
from pipelines.imaging.geometry import index_to_patient, patient_to_index, to_sitk
from pipelines.pet.types import PetVolume
from pipelines.pet.volume import geometry_order, read_headers
from pipelines.types import VolumeGeometry

logger = logging.getLogger(__name__)

PELVIS_BELOW_LUNGS_MM = 250.0
LUNG_MARGIN_MM = 5.0


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


class AnatomyMap:
    def __init__(self, ct_hu: np.ndarray, geometry: VolumeGeometry) -> None:
        self.geometry = geometry
        self.ct_hu = ct_hu  # on the PET grid
        air = (ct_hu > -950) & (ct_hu < -500)
        labels, count = ndimage.label(air)
        border = set(
            np.unique(
                np.concatenate(
                    [labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
                )
            )
        )
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
        inner = [i + 1 for i in np.argsort(sizes)[::-1] if i + 1 not in border][:2]
        lungs = np.isin(labels, inner) if inner else np.zeros(ct_hu.shape, dtype=bool)
        # A nodule is a hole in the air of its lung: filled slice by slice so that it counts as lung.
        self.lungs = np.stack([ndimage.binary_fill_holes(plane) for plane in lungs])
        margin = np.maximum(np.round(LUNG_MARGIN_MM / np.asarray(geometry.spacing_mm[::-1])).astype(int), 1)
        self.near_lungs = ndimage.binary_dilation(self.lungs, np.ones(2 * margin + 1, dtype=bool))
        if self.lungs.any():
            z = index_to_patient(geometry, np.argwhere(self.lungs))[:, 2]
            self.lung_z = (float(z.min()), float(z.max()))
        else:
            self.lung_z = None

    def location(self, centroid_mm: Sequence[float]) -> str:
        """ "" where the CT does not show the lesion's centroid, or shows no lungs to orient by."""
        if self.lung_z is None:
            return ""
        index = np.round(patient_to_index(self.geometry, np.asarray(centroid_mm))).astype(int)
        if (
            np.any(index < 0)
            or np.any(index >= np.asarray(self.lungs.shape))
            or not np.isfinite(self.ct_hu[tuple(index)])
        ):
            return ""  # outside the CT's coverage: no location is guessed
        if self.near_lungs[tuple(index)]:
            return "lung"
        z = float(centroid_mm[2])
        bottom, top = self.lung_z
        if z > top:
            return "head and neck"
        if z >= bottom:
            return "thorax"
        return "abdomen" if bottom - z <= PELVIS_BELOW_LUNGS_MM else "pelvis"


def anatomy_for(pet: PetVolume, ct_paths: Sequence[Path]) -> AnatomyMap | None:
    if not ct_paths:
        return None
    try:
        return AnatomyMap(load_ct_on_pet_grid(ct_paths, pet.geometry), pet.geometry)
    except SeriesNotUsable as error:
        logger.warning("CT not usable for anatomical locations: %s", error)
        return None
