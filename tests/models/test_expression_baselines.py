"""The method's baselines learn a planted expression signal and do not find one that is absent."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from models.expression_baselines import BASELINES, SVM_GRID, TREE_GRID, fit_predict
from models.expression_transformer import load_panel, panel_features
from tests.synthetic_cohorts import synthetic_cohort


def test_grids_are_the_methods_grids() -> None:
    assert SVM_GRID == {"svc__kernel": ["linear", "poly", "rbf"], "svc__C": [1, 10, 100], "svc__gamma": [1, 0.1, 0.001]}
    # Random forest and AdaBoost: tree depth 2-10 and 10-300 estimators, as published.
    assert (min(TREE_GRID["depth"]), max(TREE_GRID["depth"])) == (2, 10)
    assert (min(TREE_GRID["estimators"]), max(TREE_GRID["estimators"])) == (10, 300)


@pytest.mark.parametrize("signal", [True, False])
def test_baselines_on_planted_and_absent_signal(signal: bool, torch_threads_restored) -> None:
    panel = load_panel()
    cohort = synthetic_cohort(panel.genes, patients=160, signal=signal, seed=8)
    features = panel_features([dict(zip(cohort.genes, row)) for row in cohort.tpm], panel)
    train, test = train_test_split(np.arange(160), test_size=0.3, stratify=cohort.labels, random_state=0)
    for name in BASELINES:
        scores = fit_predict(name, features[train], cohort.labels[train], features[test], grid="quick")
        assert scores.shape == (len(test),) and np.all((scores >= 0) & (scores <= 1)), name
        auc = roc_auc_score(cohort.labels[test], scores)
        assert (auc >= 0.8) is signal, (name, auc)
