"""The histology arm's analysis of one slide: tissue detection, the patch grid at 20x, stain normalisation,
patch features from the encoder, gated-attention MIL pooling into the slide embedding with the per-patch
attention, and the attention heatmap on the tissue level (attention / its maximum, per patch area)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.histology import slide as wsi
from pipelines.histology import stain
from pipelines.histology.settings import HistologySettings
from pipelines.histology.types import SlideAnalysis
from pipelines.types import ModelIdentity

logger = logging.getLogger(__name__)

STAIN_FIT_PATCHES = 64  # the slide's stain model is estimated on up to this many of its tissue patches


def heatmap(tissue: wsi.TissueMap, grid: wsi.PatchGrid, attention: np.ndarray) -> np.ndarray:
    """Attention scaled to 0..1 (by its maximum) painted over each patch's area at the tissue level."""
    rows, columns = tissue.mask.shape
    scale_x, scale_y = columns / grid.level.columns, rows / grid.level.rows
    painted = np.zeros((rows, columns), np.float32)
    peak = float(attention.max()) if attention.size else 0.0
    for (column, row), value in zip(grid.origins, attention):
        x0, y0 = int(column * scale_x), int(row * scale_y)
        x1 = max(int((column + grid.size) * scale_x), x0 + 1)
        y1 = max(int((row + grid.size) * scale_y), y0 + 1)
        painted[y0:y1, x0:x1] = value / peak if peak > 0 else 0.0
    return painted


def patch_features(
    opened: object, grid: wsi.PatchGrid, settings: HistologySettings, encoder: object
) -> tuple[np.ndarray, str]:
    """Features of every patch of the grid (read, stain-normalised and encoded in batches: memory stays at one
    batch of patches), and the stain model's description."""
    from models.histology import encode_patches

    fit_rows = np.linspace(0, len(grid.origins) - 1, min(STAIN_FIT_PATCHES, len(grid.origins))).round().astype(int)
    sample = np.stack([wsi.read_patches(opened, grid, int(i), int(i) + 1)[0] for i in fit_rows])
    model = stain.fit(sample, settings.stain_normalisation)
    features = []
    for start in range(0, len(grid.origins), settings.batch_size):
        patches = wsi.read_patches(opened, grid, start, start + settings.batch_size)
        features.append(encode_patches(encoder, stain.normalise(patches, model), settings.batch_size))
    return np.concatenate(features), model.describe()


def analyse_slide(
    series_instance_uid: str,
    paths: Sequence[Path],
    settings: HistologySettings,
    encoder: object,
    encoder_identity: ModelIdentity,
    mil: object,
    mil_identity: ModelIdentity,
    device: object = None,
) -> SlideAnalysis:
    """One slide; `device` (a `models.device.Device`, the CPU when None) is where the networks are: on a GPU the
    slide's every tissue patch is encoded (`gpu_max_patches`), on the CPU an even subsample (`max_patches`)."""
    from models.device import CPU
    from models.histology import embed_slide

    device = device or CPU
    limit = settings.gpu_max_patches if device.accelerated else settings.max_patches
    with wsi.open_slide(paths) as opened:
        tissue, grid = wsi.tissue_patches(opened, settings, limit)
        features, stain_text = patch_features(opened, grid, settings, encoder)
    pooled = embed_slide(mil, features)
    logger.info(
        "slide %s: %d patches (of %d with tissue) at %.2f µm/pixel, tissue %.1f %%, encoded on %s",
        series_instance_uid,
        len(grid.origins),
        grid.candidates,
        grid.level.microns_per_pixel,
        100 * tissue.fraction,
        device.description,
    )
    return SlideAnalysis(
        series_instance_uid=series_instance_uid,
        source_paths=tuple(paths),
        tissue_level=tissue.level,
        tissue_fraction=tissue.fraction,
        patch_level=grid.level,
        patch_size=grid.size,
        origins=grid.origins,
        candidates=grid.candidates,
        stain=stain_text,
        encoder=encoder_identity,
        mil=mil_identity,
        embedding=pooled.embedding,
        attention=pooled.attention,
        probability=pooled.probability,
        heatmap=heatmap(tissue, grid, pooled.attention),
        device=device.description + (f" ({device.fallback})" if device.fallback else ""),
        patch_limit=limit,
    )
