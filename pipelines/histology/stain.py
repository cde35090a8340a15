"""Stain normalisation of H&E patches.

Macenko et al. 2009 ("A method for normalizing histology slides for quantitative analysis"): optical density,
background (OD < 0.15) dropped, the plane of the two largest eigenvectors, the stain vectors at the 1st/99th
percentile angles, concentrations by least squares, mapped to the reference stain matrix and maximal
concentrations of the paper's reference implementation. The stain vectors are estimated once per slide (on
its tissue patches), not per patch: a patch with little stain gives unstable vectors.

Reinhard et al. 2001 ("Color transfer between images"): per-channel mean and standard deviation in LAB moved to
a reference; the slide's statistics over its tissue patches. Implemented here in numpy (a few lines each); the
libraries that offer them (torchstain, staintools) estimate per image and add dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The reference of Macenko's method as used by its common implementations.
REFERENCE_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])
LIGHT = 240.0  # transmitted light intensity
# Reinhard reference: LAB means and standard deviations of a typical H&E tile (documented choice).
REFERENCE_LAB_MEAN = np.array([66.0, 28.0, -12.0])
REFERENCE_LAB_STD = np.array([14.0, 9.0, 7.0])


@dataclass(frozen=True, eq=False)
class StainModel:
    method: str
    stains: np.ndarray | None = None  # Macenko: [3, 2] H and E optical-density vectors
    max_concentrations: np.ndarray | None = None  # Macenko: 99th percentiles of H and E
    lab_mean: np.ndarray | None = None  # Reinhard
    lab_std: np.ndarray | None = None

    def describe(self) -> str:
        if self.method == "macenko" and self.stains is not None:
            h, e = self.stains.T
            return f"Macenko; slide H vector {np.round(h, 3).tolist()}, E vector {np.round(e, 3).tolist()}"
        if self.method == "reinhard" and self.lab_mean is not None:
            return f"Reinhard; slide LAB mean {np.round(self.lab_mean, 1).tolist()}"
        return "none"


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.astype(float) + 1) / LIGHT)


def _concentrations(stains: np.ndarray, od: np.ndarray) -> np.ndarray:
    """The least-squares stain concentrations [2, pixels] of optical densities [pixels, 3]: the pseudo-inverse of
    the 3 x 2 stain matrix applied to every pixel (lstsq's minimum-norm solution; lstsq with a million right-hand
    sides took 30 times as long)."""
    return np.linalg.pinv(stains) @ od.T


def fit(patches: np.ndarray, method: str, alpha: float = 1.0, beta: float = 0.15) -> StainModel:
    """The slide's stain model from its tissue patches (uint8 [N, H, W, 3])."""
    if method == "none" or len(patches) == 0:
        return StainModel("none")
    pixels = patches.reshape(-1, 3)
    if len(pixels) > 2_000_000:  # a fixed subsample: enough for the percentiles
        pixels = pixels[:: len(pixels) // 2_000_000 + 1]
    if method == "reinhard":
        lab = rgb_to_lab(pixels[None].astype(float) / 255.0)[0]
        return StainModel("reinhard", lab_mean=lab.mean(0), lab_std=np.maximum(lab.std(0), 1e-6))
    od = _optical_density(pixels)
    tissue = od[(od > beta).all(axis=1)]
    if len(tissue) < 100:
        return StainModel("none")
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, 1:3]
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, alpha), np.percentile(angles, 100 - alpha)
    first = plane @ np.array([np.cos(low), np.sin(low)])
    second = plane @ np.array([np.cos(high), np.sin(high)])
    stains = np.array([first, second]).T if first[0] > second[0] else np.array([second, first]).T
    stains = stains * np.sign(stains.sum(axis=0, keepdims=True) + 1e-12)  # optical densities are positive
    concentrations = _concentrations(stains, od)
    return StainModel("macenko", stains=stains, max_concentrations=np.percentile(concentrations, 99, axis=1))


def normalise(patches: np.ndarray, model: StainModel) -> np.ndarray:
    """Patches (uint8 [N, H, W, 3]) in the reference stain appearance."""
    if model.method == "macenko" and model.stains is not None:
        shape = patches.shape
        od = _optical_density(patches.reshape(-1, 3))
        concentrations = _concentrations(model.stains, od)
        concentrations *= (REFERENCE_MAX_CONCENTRATIONS / np.maximum(model.max_concentrations, 1e-6))[:, None]
        rgb = LIGHT * np.exp(-(REFERENCE_STAINS @ concentrations))
        return np.clip(rgb.T, 0, 255).reshape(shape).astype(np.uint8)
    if model.method == "reinhard" and model.lab_mean is not None:
        lab = rgb_to_lab(patches.astype(float) / 255.0)
        lab = (lab - model.lab_mean) / model.lab_std * REFERENCE_LAB_STD + REFERENCE_LAB_MEAN
        return np.clip(lab_to_rgb(lab) * 255, 0, 255).astype(np.uint8)
    return patches


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(rgb)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb

    return lab2rgb(lab)
