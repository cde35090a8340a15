"""Training and cross-validation of the CytAct network, following the method: random rotations of 0-90°
about all three axes, 15 rotated copies of each lesion per iteration, 10-fold cross-validation, Spearman
rho of the pooled out-of-fold predictions.

Training is deterministic for a given seed (one thread, deterministic algorithms), so that the shipped
weights can be reproduced by `scripts/train_cytact_weights.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage, stats

from models.cytact import CytActNet, predict


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 12
    copies_per_lesion: int = 15  # rotated copies of each lesion per iteration (the method's value)
    max_rotation_deg: float = 90.0
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    folds: int = 10
    seed: int = 20261123

    def as_dict(self) -> dict:
        return asdict(self)


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about the first, second and third array axes in turn."""
    matrix = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(angles_deg)):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        matrix = turn @ matrix
    return matrix


def rotate_cube(cube: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rotate both channels about the cube centre in one resampling (linear; the mask re-thresholded at 0.5)."""
    matrix = rotation_matrix(angles_deg)
    centre = (np.asarray(cube.shape[1:]) - 1) / 2.0
    offset = centre - matrix @ centre
    suv = ndimage.affine_transform(cube[0], matrix, offset=offset, order=1, mode="constant", cval=0.0)
    mask = ndimage.affine_transform(cube[1], matrix, offset=offset, order=1, mode="constant", cval=0.0) >= 0.5
    return np.stack([suv, mask.astype(np.float32)]).astype(np.float32)


def augmented_epoch(cubes: np.ndarray, targets: np.ndarray, settings: TrainingSettings, rng: np.random.Generator):
    """Each lesion `copies_per_lesion` times, each copy with fresh random rotations, shuffled."""
    copies = []
    for cube in cubes:
        for _ in range(settings.copies_per_lesion):
            copies.append(rotate_cube(cube, rng.uniform(0.0, settings.max_rotation_deg, size=3)))
    order = rng.permutation(len(copies))
    return np.stack(copies)[order], np.repeat(targets, settings.copies_per_lesion)[order]


def train_model(cubes: np.ndarray, targets: np.ndarray, settings: TrainingSettings, seed: int) -> CytActNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CytActNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs)
    loss_function = torch.nn.MSELoss()
    for _ in range(settings.epochs):
        model.train()
        inputs, labels = augmented_epoch(cubes, targets, settings, rng)
        for start in range(0, len(inputs), settings.batch_size):
            batch = torch.from_numpy(inputs[start : start + settings.batch_size])
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            optimiser.zero_grad()
            loss = loss_function(model(batch), torch.from_numpy(labels[start : start + settings.batch_size]))
            loss.backward()
            optimiser.step()
        scheduler.step()
    model.eval()
    return model


@dataclass(frozen=True)
class CrossValidation:
    out_of_fold: np.ndarray
    spearman_rho: float
    spearman_p: float
    fold_rho: tuple[float, ...]


def cross_validate(cubes: np.ndarray, targets: np.ndarray, settings: TrainingSettings) -> CrossValidation:
    rng = np.random.default_rng(settings.seed)
    fold_of = rng.permutation(len(cubes)) % settings.folds
    out_of_fold = np.zeros(len(cubes), dtype=np.float32)
    fold_rho = []
    for fold in range(settings.folds):
        held_out = fold_of == fold
        model = train_model(cubes[~held_out], targets[~held_out], settings, settings.seed + fold + 1)
        out_of_fold[held_out] = predict(model, cubes[held_out])
        fold_rho.append(float(stats.spearmanr(out_of_fold[held_out], targets[held_out]).statistic))
    result = stats.spearmanr(out_of_fold, targets)
    return CrossValidation(out_of_fold, float(result.statistic), float(result.pvalue), tuple(fold_rho))


def balanced_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices with the smaller class drawn again (with replacement) until the classes are 1:1."""
    classes, counts = np.unique(labels, return_counts=True)
    rows = np.arange(len(labels))
    if len(classes) < 2 or counts[0] == counts[1]:
        return rows
    minority = np.flatnonzero(labels == classes[np.argmin(counts)])
    return np.concatenate([rows, rng.choice(minority, size=abs(counts[0] - counts[1]), replace=True)])


def deterministic_torch() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
