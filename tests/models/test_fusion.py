"""Attention fusion: the missing-modality mask, modality weights, and planted vs absent signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from models.fusion import AttentionFusion, FusionData, FusionSettings, predict, train_fusion
from tests.synthetic_cohorts import synthetic_cohort

DIMS = {"imaging": 4, "genomic": 3, "clinical": 2}


def _data(rng: np.random.Generator, n: int = 6) -> FusionData:
    inputs = {m: rng.normal(size=(n, d)) for m, d in DIMS.items()}
    present = np.ones((n, 3), dtype=bool)
    return FusionData(inputs, present, rng.integers(0, 2, n))


def test_missing_modality_is_masked_not_zero_filled() -> None:
    torch.manual_seed(0)
    model = AttentionFusion(DIMS, FusionSettings()).eval()
    data = _data(np.random.default_rng(0))
    present = data.present.copy()
    present[:, 1] = False  # genomic absent
    masked = FusionData(data.inputs, present)
    probability, weights = predict(model, masked)
    assert np.all(weights[:, 1] == 0.0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    # Whatever the absent modality's values, the output does not change...
    other = FusionData({**data.inputs, "genomic": data.inputs["genomic"] * 100 + 7}, present)
    np.testing.assert_allclose(predict(model, other)[0], probability, rtol=1e-6)
    # ...and it differs from feeding zeros as if they were a present modality.
    zero_filled = FusionData({**data.inputs, "genomic": np.zeros_like(data.inputs["genomic"])}, data.present)
    assert not np.allclose(predict(model, zero_filled)[0], probability)


def test_single_modality_gets_all_the_weight() -> None:
    model = AttentionFusion(DIMS, FusionSettings()).eval()
    data = _data(np.random.default_rng(1))
    present = np.zeros_like(data.present)
    present[:, 2] = True
    _, weights = predict(model, FusionData(data.inputs, present))
    np.testing.assert_allclose(weights, np.tile([0.0, 0.0, 1.0], (len(weights), 1)))


def _cohort_data(signal: bool) -> FusionData:
    cohort = synthetic_cohort(("GZMA", "PRF1", "CXCL9", "IFNG"), patients=240, signal=signal, seed=5, extra_genes=4)
    rng = np.random.default_rng(2)
    clinical = np.array([[float(c["ecog"]), np.log(float(c["ldh"]) / 250)] for c in cohort.clinical])
    inputs = {
        "imaging": cohort.imaging.mean(axis=1),
        "genomic": np.log2(cohort.tpm[:, :4] + 1),
        "clinical": clinical,
    }
    present = rng.random((240, 3)) > 0.25  # a quarter of each modality missing
    present[~present.any(axis=1), 2] = True
    return FusionData(inputs, present, cohort.labels)


@pytest.mark.parametrize(("signal", "expect_high"), [(True, True), (False, False)])
def test_planted_signal_is_learned_and_absent_signal_is_not(signal: bool, expect_high: bool) -> None:
    data = _cohort_data(signal)
    rows = np.arange(len(data.labels))
    rest, test = train_test_split(rows, test_size=0.2, stratify=data.labels, random_state=0)
    train, validation = train_test_split(rest, test_size=0.125, stratify=data.labels[rest], random_state=0)
    model = train_fusion(data.rows(train), data.rows(validation), "attention", FusionSettings())
    probability, weights = predict(model, data.rows(test))
    auc = roc_auc_score(data.labels[test], probability)
    assert (auc >= 0.8) is expect_high, auc
    assert np.all(weights[~data.present[test]] == 0)
    assert weights.shape[1] == len(data.inputs)  # one weight per modality given


def test_node_refuses_fusion_weights_that_do_not_match_their_card(tmp_path, make_settings) -> None:
    from dataclasses import asdict

    from immunode.config import ConfigError
    from immunode.startup import check_startup
    from models.cards import ModelCard, save_weights

    model = AttentionFusion(DIMS, FusionSettings())
    card = ModelCard("test-fusion", "0", True, "synthetic", "tests", {}, {})
    card = ModelCard(
        **{
            **card.__dict__,
            "parameters": {"kind": "attention", "dims": DIMS, "settings": asdict(FusionSettings())},
        }
    )
    weights = tmp_path / "fusion.pt"
    save_weights(model.state_dict(), weights, card)
    settings = make_settings(pipelines={"response": {"fusion_weights": str(weights)}})
    check_startup(settings, ports=False).raise_problems()
    weights.write_bytes(weights.read_bytes() + b"tampered")
    with pytest.raises(ConfigError, match="pipelines.response.fusion_weights: weights fusion.pt have sha256"):
        check_startup(settings, ports=False).raise_problems()
