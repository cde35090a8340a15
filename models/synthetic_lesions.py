"""Synthetic FDG-PET lesions whose CytAct is a documented function of their uptake pattern, for the
demonstration weights and the tests. These are NOT biological data: weights trained on them only show that
the pipeline learns a known function.

The function (documented here and in the model card):

    CytAct = 0.9 * tanh((SUVmean - 5) / 3) - 1.5 * necrotic_fraction - 1.0 * heterogeneity + 0.3 + noise

with SUVmean the mean SUV of the viable lesion, necrotic_fraction the fraction of the lesion volume that is a
photopenic core, heterogeneity the coefficient of variation of the uptake texture inside the lesion, and
noise ~ N(0, 0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.cytact import CubeSpec, lesion_cube

GRID_MM = 2.0  # the synthetic scanner grid, before resampling to the cube
GRID_VOXELS = 40  # 80 mm field around each lesion
PSF_FWHM_MM = 6.0


def cytact_function(suv_mean: float, necrotic_fraction: float, heterogeneity: float) -> float:
    return 0.9 * math.tanh((suv_mean - 5.0) / 3.0) - 1.5 * necrotic_fraction - 1.0 * heterogeneity + 0.3


@dataclass(frozen=True)
class SyntheticLesionSample:
    cube: np.ndarray  # [2, n, n, n]
    cytact: float
    suv_mean: float
    necrotic_fraction: float
    heterogeneity: float


def make_lesion(rng: np.random.Generator, spec: CubeSpec = CubeSpec()) -> SyntheticLesionSample:
    radius_mm = rng.uniform(7.0, 16.0)
    suv_mean = rng.uniform(2.5, 14.0)
    necrotic_fraction = rng.choice([0.0, rng.uniform(0.05, 0.45)], p=[0.4, 0.6])
    heterogeneity = rng.uniform(0.0, 0.45)
    background = rng.uniform(0.6, 1.6)
    n = GRID_VOXELS
    coordinates = (np.indices((n, n, n)) - (n - 1) / 2.0) * GRID_MM
    # An ellipsoid with random axes ratios, centred with a small random shift.
    scales = rng.uniform(0.8, 1.2, size=3)
    shift = rng.uniform(-3.0, 3.0, size=3)
    r = np.sqrt(sum(((coordinates[a] - shift[a]) / scales[a]) ** 2 for a in range(3)))
    lesion = r <= radius_mm
    core = r <= radius_mm * necrotic_fraction ** (1.0 / 3.0)
    texture = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 1.5)
    texture /= texture[lesion].std() + 1e-9
    uptake = suv_mean * (1.0 + heterogeneity * texture)
    image = np.full((n, n, n), background)
    image[lesion] = np.clip(uptake[lesion], background, None)
    image[core] = background * 0.8
    image = ndimage.gaussian_filter(image, PSF_FWHM_MM / 2.3548 / GRID_MM)
    image += rng.normal(scale=0.05 * background, size=image.shape)
    cytact = cytact_function(suv_mean, necrotic_fraction, heterogeneity) + rng.normal(scale=0.05)
    centre = np.full(3, (n - 1) / 2.0) + shift / GRID_MM
    cube = lesion_cube(image, (GRID_MM,) * 3, centre, lesion, (0, 0, 0), spec)
    return SyntheticLesionSample(cube, float(cytact), float(suv_mean), float(necrotic_fraction), float(heterogeneity))


def make_cohort(count: int, seed: int, spec: CubeSpec = CubeSpec()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    samples = [make_lesion(rng, spec) for _ in range(count)]
    return np.stack([s.cube for s in samples]), np.array([s.cytact for s in samples], dtype=np.float32)
