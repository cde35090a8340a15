"""Configuration block `pipelines.response`: the response models served with the PET report."""

from __future__ import annotations

from pathlib import Path

from common.settings import Strict


class ResponseModelSettings(Strict):
    """Patient-level response models added to the PET report when the patient has imported data."""

    # Trained weights (with their .card.json); None: that model is not run and the SR says so.
    expression_weights: Path | None = None
    fusion_weights: Path | None = None
