"""Acquired-resistance signature: a classifier of oligo- versus systemic progression from Δ radiomic features
(longitudinal CT method). Standardised features, L2 logistic regression with balanced class weights
(the method reports per-feature AUCs, not a multivariable model: the classifier is our documented choice).
Weights are saved with a model card like every other model (sha256 verified on loading).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.cards import ModelCard, load_verified, save_weights
from models.errors import ModelError

NAME = "immunode-ar-signature"
VERSION = "1.0"


@dataclass(frozen=True, eq=False)
class ArSignature:
    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coefficients: np.ndarray
    intercept: float

    def probability_systemic(self, values: Mapping[str, float | None]) -> float:
        missing = [name for name in self.features if values.get(name) is None]
        if missing:
            raise ModelError(f"delta not defined for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        x = (np.array([values[name] for name in self.features], dtype=float) - self.mean) / self.scale
        return float(1.0 / (1.0 + np.exp(-(x @ self.coefficients + self.intercept))))


def fit(table: np.ndarray, features: Sequence[str], systemic: np.ndarray, c: float = 1.0) -> ArSignature:
    from sklearn.linear_model import LogisticRegression

    if np.isnan(table).any():
        raise ModelError("the training table has undefined Δ values; remove those patients or features")
    if systemic.all() or not systemic.any():
        raise ModelError("the training table needs patients of both patterns")
    mean, scale = table.mean(axis=0), table.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=1000).fit((table - mean) / scale, systemic)
    return ArSignature(tuple(features), mean, scale, model.coef_[0].astype(float), float(model.intercept_[0]))


def save(signature: ArSignature, path: Path, training_data: str, synthetic: bool, metrics: dict) -> ModelCard:
    state = {
        "mean": torch.tensor(signature.mean),
        "scale": torch.tensor(signature.scale),
        "coefficients": torch.tensor(signature.coefficients),
        "intercept": torch.tensor([signature.intercept]),
    }
    card = ModelCard(
        name=NAME,
        version=VERSION,
        synthetic_training_data=synthetic,
        training_data=training_data,
        intended_use="Research use only: oligo- vs systemic progression pattern from delta-radiomics",
        metrics=metrics,
        parameters={"features": list(signature.features), "model": "standardised L2 logistic regression"},
    )
    return save_weights(state, Path(path), card)


def load(path: Path) -> tuple[ArSignature, ModelCard]:
    state, card = load_verified(path)
    try:
        signature = ArSignature(
            tuple(card.parameters["features"]),
            state["mean"].double().numpy(),
            state["scale"].double().numpy(),
            state["coefficients"].double().numpy(),
            float(state["intercept"][0]),
        )
    except (KeyError, TypeError) as error:
        raise ModelError(f"{path}: not AR-signature weights ({error})") from None
    return signature, card
