"""Configuration block `pipelines.histology`: whole-slide preprocessing of the multimodal method's histology
arm (tissue detection, 20x patches, stain normalisation) and the weights of its encoder and MIL pooling."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from common.settings import Strict


class HistologySettings(Strict):
    # Patches of the method: 256 x 256 pixels at 20x, i.e. 0.5 µm/pixel; the pyramid level nearest to it is
    # used and stated in the report (a level finer than asked is never resampled: the method reads stored tiles).
    patch_size: int = Field(256, ge=32, le=1024)
    microns_per_pixel: float = Field(0.5, gt=0)
    # Tissue detection on a low-resolution level (nearest to this resolution): Otsu's threshold on the
    # saturation of the HSV image (our choice, the common one for H&E), holes filled, specks removed.
    tissue_microns_per_pixel: float = Field(8.0, gt=0)
    min_tissue_fraction: float = Field(0.5, gt=0, le=1)  # a patch is kept when this much of it is tissue
    min_saturation: float = Field(0.05, ge=0, le=1)  # below: background whatever Otsu says (blank slides)
    # At most this many patches per slide, an even spatial subsample when there are more (CPU time: ~0.3 s per
    # patch for ResNet-50 on one core); the report says when a slide was subsampled.
    max_patches: int = Field(1000, ge=1)
    # On a GPU (`pipelines.compute.device`) the encoder reads every tissue patch (None), or at most this many.
    gpu_max_patches: int | None = Field(None, ge=1)
    # Macenko et al. 2009 (stain vectors estimated per slide, concentrations mapped to the reference H&E of the
    # paper's implementation), Reinhard et al. 2001 (LAB mean/std to a reference), or none.
    stain_normalisation: Literal["macenko", "reinhard", "none"] = "macenko"
    # Weights trained by `immunode train histology` (cards say what they were trained on). None: slides are
    # stored and indexed, and their jobs fail saying that no weights are configured.
    encoder_weights: Path | None = None
    mil_weights: Path | None = None
    batch_size: int = Field(16, ge=1)
