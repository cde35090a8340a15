"""The CytAct network: it learns the synthetic lesions' documented function, its weights carry verified
model cards, the shipped weights reproduce from their script, and inference is fast on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from models import default_weights
from models.cards import ModelCard, load_verified, save_weights
from models.cytact import CubeSpec, CytActNet, predict
from models.errors import WeightsMismatch
from models.serving import load_cytact
from models.synthetic_lesions import make_cohort
from models.training import TrainingSettings, augmented_epoch, cross_validate, deterministic_torch, train_model

pytestmark = pytest.mark.usefixtures("torch_threads_restored")


def test_training_learns_the_documented_function_on_held_out_lesions() -> None:
    deterministic_torch()
    cubes, targets = make_cohort(160, seed=1)
    held_out_cubes, held_out_targets = make_cohort(60, seed=2)
    model = train_model(cubes, targets, TrainingSettings(epochs=6, copies_per_lesion=4), seed=7)
    rho = stats.spearmanr(predict(model, held_out_cubes), held_out_targets).statistic
    assert rho >= 0.8


def test_each_iteration_sees_fifteen_rotated_copies_of_each_lesion() -> None:
    cubes, targets = make_cohort(3, seed=3)
    inputs, labels = augmented_epoch(cubes, targets, TrainingSettings(), np.random.default_rng(0))
    assert inputs.shape == (45, *cubes.shape[1:])
    assert sorted(labels.tolist()) == sorted(np.repeat(targets, 15).tolist())
    # Rotations move voxels but keep the lesion: each copy keeps at least three quarters of its mask volume.
    original = dict(zip(targets.tolist(), cubes[:, 1].sum(axis=(1, 2, 3))))
    for copy, label in zip(inputs, labels.tolist()):
        assert copy[1].sum() >= 0.75 * original[label]


def test_cross_validation_pools_out_of_fold_predictions() -> None:
    deterministic_torch()
    cubes, targets = make_cohort(30, seed=4)
    result = cross_validate(cubes, targets, TrainingSettings(epochs=1, copies_per_lesion=1, folds=3))
    assert result.out_of_fold.shape == targets.shape and len(result.fold_rho) == 3
    assert result.spearman_rho == pytest.approx(stats.spearmanr(result.out_of_fold, targets).statistic)


def _card(**changes) -> ModelCard:
    base = dict(
        name="m",
        version="1",
        weights_file="",
        sha256="",
        synthetic_training_data=True,
        training_data="synthetic",
        intended_use="tests",
    )
    return ModelCard(**{**base, **changes})


def test_weights_whose_hash_differs_from_their_card_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    saved = save_weights(CytActNet().state_dict(), weights, _card())
    assert load_verified(weights)[1] == saved
    weights.write_bytes(weights.read_bytes() + b"tampered")
    with pytest.raises(WeightsMismatch, match="refused"):
        load_cytact(weights)


def test_shipped_weights_are_labelled_synthetic_and_verified() -> None:
    model, card = load_cytact(None)
    assert card.synthetic_training_data and "SYNTHETIC" in card.training_data
    assert card.metrics["spearman_rho"] >= 0.8
    assert card.metrics["cross_validation"].startswith("10-fold")
    assert card.parameters["copies_per_lesion"] == 15 and card.parameters["max_rotation_deg"] == 90.0


def test_cpu_inference_is_under_a_second_per_lesion() -> None:
    model, _ = load_cytact(None)
    cube = make_cohort(1, seed=5)[0]
    predict(model, cube)  # warm-up
    started = time.perf_counter()
    predict(model, cube)
    assert time.perf_counter() - started < 1.0


@pytest.mark.slow
def test_shipped_weights_reproduce_from_their_script() -> None:
    """Retraining with the script gives a model that predicts what the shipped one predicts. Not bit for bit:
    float kernels differ between CPUs (vector widths, summation order), and training amplifies the last-bit
    differences, so the weights are compared through their predictions on fixed lesions the models never
    saw: rank agreement (Spearman >= 0.99) and every prediction within 0.15 of the shipped one (7.5 % of the
    about -1 .. +1 output range; measured 0.03-0.04 between machines and between PyTorch CPU kernel sets)."""
    shipped, card = load_cytact(None)
    retrained = default_weights.train_final()
    cubes, _ = make_cohort(80, seed=4242)
    expected, actual = predict(shipped, cubes), predict(retrained, cubes)
    assert stats.spearmanr(expected, actual).statistic >= 0.99
    assert np.abs(expected - actual).max() <= 0.15
    assert card.parameters["cube_mm"] == CubeSpec().size_mm
