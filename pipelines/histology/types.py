"""Values of the histology pipeline: one analysed slide, and a job's slides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.histology.slide import Level
from pipelines.omics.types import ResponsePredictions
from pipelines.types import ModelIdentity


@dataclass(frozen=True, eq=False)
class SlideAnalysis:
    series_instance_uid: str
    source_paths: tuple[Path, ...]  # every level's instance
    tissue_level: Level  # tissue detection, and the heatmap's source image
    tissue_fraction: float
    patch_level: Level
    patch_size: int
    origins: np.ndarray = field(repr=False)  # int [N, 2] (column, row) in patch-level pixels
    candidates: int  # tissue patches before the max_patches subsample
    stain: str  # the normalisation and the slide's estimated stain
    encoder: ModelIdentity
    mil: ModelIdentity
    embedding: np.ndarray = field(repr=False)  # [M]
    attention: np.ndarray = field(repr=False)  # [N], sums to 1
    probability: float
    heatmap: np.ndarray = field(repr=False)  # float [rows, columns] of the tissue level, 0..1 (attention / max)
    response: ResponsePredictions | None = None
    device: str = "CPU"  # what the encoder ran on, and why when a configured GPU was missing
    patch_limit: int | None = None  # the subsample's size on that device (None: every tissue patch)


@dataclass(frozen=True)
class HistologyJob:
    results: tuple[SlideAnalysis, ...]
    problems: tuple[str, ...]
