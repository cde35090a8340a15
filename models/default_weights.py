"""Produces the shipped CytAct demonstration weights (`models/weights/cytact-synthetic-v1.pt`) from
synthetic lesions (see `models.synthetic_lesions`): 10-fold cross-validation for the model card, then
the final model on all lesions. Deterministic: running it again reproduces the weights.

    python -m models.default_weights [--skip-cv]
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from models.cards import ModelCard, card_path, load_card, save_weights
from models.cytact import CubeSpec, CytActNet, predict
from models.synthetic_lesions import make_cohort
from models.training import TrainingSettings, deterministic_torch, train_model

logger = logging.getLogger(__name__)

NAME = "immunode-cytact-cnn"
VERSION = "1.0.0-synthetic"
WEIGHTS = Path(__file__).parent / "weights" / "cytact-synthetic-v1.pt"
COHORT_SIZE = 300
COHORT_SEED = 1100
SETTINGS = TrainingSettings(epochs=8, copies_per_lesion=15, folds=10, seed=20261123)


def cohort() -> tuple[np.ndarray, np.ndarray]:
    return make_cohort(COHORT_SIZE, COHORT_SEED, CubeSpec())


def train_final() -> CytActNet:
    deterministic_torch()
    cubes, targets = cohort()
    return train_model(cubes, targets, SETTINGS, SETTINGS.seed)


def _fold(fold: int) -> tuple[np.ndarray, np.ndarray]:
    deterministic_torch()
    cubes, targets = cohort()
    fold_of = np.random.default_rng(SETTINGS.seed).permutation(len(cubes)) % SETTINGS.folds
    held_out = fold_of == fold
    model = train_model(cubes[~held_out], targets[~held_out], SETTINGS, SETTINGS.seed + fold + 1)
    return np.flatnonzero(held_out), predict(model, cubes[held_out])


def cross_validation_metrics(workers: int) -> dict:
    _, targets = cohort()
    out_of_fold = np.zeros(len(targets), dtype=np.float32)
    with ProcessPoolExecutor(workers) as pool:
        for indices, predictions in pool.map(_fold, range(SETTINGS.folds)):
            out_of_fold[indices] = predictions
    pooled = stats.spearmanr(out_of_fold, targets)
    return {
        "cross_validation": f"{SETTINGS.folds}-fold, pooled out-of-fold predictions",
        "spearman_rho": round(float(pooled.statistic), 4),
        "spearman_p": float(pooled.pvalue),
        "lesions": len(targets),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cv", action="store_true", help="keep the card's metrics; retrain the final model only")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # this script is an entry point
    if args.skip_cv and card_path(WEIGHTS).exists():
        metrics = load_card(card_path(WEIGHTS)).metrics
    else:
        metrics = cross_validation_metrics(args.workers)
    model = train_final()
    card = ModelCard(
        name=NAME,
        version=VERSION,
        synthetic_training_data=True,
        training_data=(
            f"SYNTHETIC DEMONSTRATION DATA: {COHORT_SIZE} simulated FDG-PET lesions (models/synthetic_lesions.py, "
            f"seed {COHORT_SEED}) whose CytAct is the documented function 0.9*tanh((SUVmean-5)/3) - "
            "1.5*necrotic_fraction - 1.0*heterogeneity + 0.3 + N(0, 0.05). Not trained on patients."
        ),
        intended_use="Research demonstration of the pipeline only; predictions carry no biological meaning.",
        metrics=metrics,
        parameters={**replace(SETTINGS).as_dict(), "cube_mm": CubeSpec().size_mm, "voxel_mm": CubeSpec().voxel_mm},
    )
    saved = save_weights(model.state_dict(), WEIGHTS, card)
    logger.info("%s sha256 %s; pooled out-of-fold Spearman rho %s", WEIGHTS, saved.sha256, metrics.get("spearman_rho"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
