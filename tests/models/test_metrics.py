"""Metric functions against scikit-learn and a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics

from models.metrics import bootstrap_interval, classification_metrics, mean_metrics


def test_hand_computed_example() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.4, 0.6, 0.1, 0.7])
    # Predicted at 0.5: 1 0 1 0 1 → TP 2, FN 1, FP 1, TN 1.
    values = classification_metrics(labels, scores)
    assert values["accuracy"] == pytest.approx(3 / 5)
    # Per class: responders (3) precision, recall and F1 2/3; non-responders (2) 1/2 each.
    # Macro (the paper's comparison table): (2/3 + 1/2) / 2 = 7/12.
    assert values["precision_macro"] == pytest.approx(7 / 12)
    assert values["recall_macro"] == pytest.approx(7 / 12) and values["f1_macro"] == pytest.approx(7 / 12)
    # Class-weighted: (3 x 2/3 + 2 x 1/2) / 5 = 3/5, so the weighted recall equals the accuracy.
    assert values["precision_weighted"] == pytest.approx(3 / 5)
    assert values["recall_weighted"] == pytest.approx(values["accuracy"])
    assert values["f1_weighted"] == pytest.approx(3 / 5)
    assert values["precision_responder"] == pytest.approx(2 / 3) and values["f1_responder"] == pytest.approx(2 / 3)
    assert values["sensitivity"] == pytest.approx(2 / 3) and values["specificity"] == pytest.approx(1 / 2)
    # Positive/negative pairs ranked correctly: (0.9 > 0.6, 0.1), (0.4 > 0.1), (0.7 > 0.6, 0.1) = 5 of 6.
    assert values["roc_auc"] == pytest.approx(5 / 6)
    # AP of responders: ranks 1 (1/1), 2 (2/2), 4 (3/4) → 11/12; of non-responders by 1 - p (0.9, 0.4 at ranks
    # 1 and 3): (1 + 2/3) / 2 = 5/6; mAP is their mean.
    assert values["ap_responder"] == pytest.approx(11 / 12)
    assert values["map"] == pytest.approx((11 / 12 + 5 / 6) / 2)


def test_agrees_with_scikit_learn_on_random_data() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        scores = rng.random(40)
        values = classification_metrics(labels, scores, threshold=0.3)
        predicted = scores >= 0.3
        assert values["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predicted))
        for average in ("macro", "weighted"):
            expected = metrics.f1_score(labels, predicted, average=average, zero_division=0)
            assert values[f"f1_{average}"] == pytest.approx(expected)
            expected = metrics.precision_score(labels, predicted, average=average, zero_division=0)
            assert values[f"precision_{average}"] == pytest.approx(expected)
        assert values["f1_responder"] == pytest.approx(metrics.f1_score(labels, predicted, zero_division=0))
        assert values["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, scores))
        assert values["ap_responder"] == pytest.approx(metrics.average_precision_score(labels, scores))


def test_single_class_split_gives_nan_not_an_exception() -> None:
    values = classification_metrics(np.zeros(5, dtype=int), np.linspace(0, 1, 5))
    assert math.isnan(values["roc_auc"]) and math.isnan(values["map"]) and math.isnan(values["ap_responder"])
    means = mean_metrics([values, {**values, "roc_auc": 0.8, "map": 0.6}])
    assert means["roc_auc"] == pytest.approx(0.8) and means["map"] == pytest.approx(0.6)


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels * 0.5 + rng.random(200)
    auc = metrics.roc_auc_score(labels, scores)
    low, high = bootstrap_interval(labels, scores, metrics.roc_auc_score, resamples=1000)
    assert low < auc < high and high - low < 0.2
