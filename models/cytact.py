"""CytAct regression from FDG-PET lesions: a 3D CNN after the PET immune-profiling method, which predicts
each lesion's cytolytic activity score (CytAct, from GZMA/PRF1 expression) from its uptake pattern.

Input (our documented choices where the method leaves them open): a cube of `CubeSpec.size_mm` (64 mm)
around the lesion centroid, resampled to isotropic `voxel_mm` (4 mm, about a PET voxel) with linear
interpolation, in the PET volume's axis orientation. Channel 0 is SUVbw / 10 clipped to [0, 3] (keeps
absolute uptake, which the method relates to CytAct); channel 1 is the lesion mask, so that the network
knows which of several nearby avid regions is meant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from models.device import model_device

SUV_SCALE = 10.0
SUV_CLIP = 3.0


@dataclass(frozen=True)
class CubeSpec:
    size_mm: float = 64.0
    voxel_mm: float = 4.0

    @property
    def voxels(self) -> int:
        return int(round(self.size_mm / self.voxel_mm))


def lesion_cube(
    suv: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    centre_index_zyx: np.ndarray,
    mask: np.ndarray,
    mask_offset: tuple[int, int, int],
    spec: CubeSpec = CubeSpec(),
) -> np.ndarray:
    """The two-channel network input, float32 [2, n, n, n], sampled from the volume around a lesion."""
    n = spec.voxels
    steps = (np.arange(n) - (n - 1) / 2.0) * spec.voxel_mm
    axes = [centre_index_zyx[axis] + steps / spacing_zyx[axis] for axis in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    suv_cube = ndimage.map_coordinates(suv, grid, order=1, mode="constant", cval=0.0)
    offset = np.asarray(mask_offset, dtype=float).reshape(3, 1, 1, 1)
    mask_cube = ndimage.map_coordinates(mask.astype(np.float32), grid - offset, order=0, mode="constant", cval=0.0)
    return np.stack([np.clip(suv_cube / SUV_SCALE, 0.0, SUV_CLIP), mask_cube]).astype(np.float32)


class CytActNet(nn.Module):
    """Three convolution blocks, global average pooling, a 32-D lesion embedding and a linear regressor."""

    def __init__(self, width: int = 16, embedding: int = 32) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(inputs, outputs, 3, padding=1), nn.BatchNorm3d(outputs), nn.ReLU(), nn.MaxPool3d(2)
            )

        self.features = nn.Sequential(
            block(2, width), block(width, 2 * width), block(2 * width, 4 * width), nn.AdaptiveAvgPool3d(1), nn.Flatten()
        )
        self.embed = nn.Sequential(nn.Linear(4 * width, embedding), nn.ReLU())
        self.head = nn.Linear(embedding, 1)

    def embedding(self, cubes: torch.Tensor) -> torch.Tensor:
        """The lesion embedding (used by the attention fusion to pool lesions per patient)."""
        return self.embed(self.features(cubes))

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(cubes)).squeeze(-1)


def predict_with_embeddings(model: CytActNet, cubes: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Predicted CytAct [n] and lesion embeddings [n, embedding] (the fusion's imaging modality), computed on
    the device the model is on."""
    model.eval()
    device = model_device(model)
    scores, embeddings = [], []
    with torch.no_grad():
        for start in range(0, len(cubes), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(cubes[start : start + batch_size])).to(device)
            embedding = model.embedding(batch)
            embeddings.append(embedding.cpu().numpy())
            scores.append(model.head(embedding).squeeze(-1).cpu().numpy())
    if not scores:
        return np.zeros(0, dtype=np.float32), np.zeros((0, model.head.in_features), dtype=np.float32)
    return np.concatenate(scores), np.concatenate(embeddings)


def predict(model: CytActNet, cubes: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model.eval()
    device = model_device(model)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(cubes), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(cubes[start : start + batch_size])).to(device)
            outputs.append(model(batch).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)
