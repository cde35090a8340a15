"""The baselines the expression-transformer method was compared against, fitted on the same splits and the
same preprocessed panel features: SVM (grid search over kernel, C and gamma), random forest and AdaBoost
(grid searches over tree depth 2-10 and 10-300 estimators, as published), XGBoost and a 1-D CNN of three
Conv1D layers. Each returns responder probabilities for the held-out samples.

Resampling only where a model trains: `fit_predict` takes the training rows as they are, and each baseline
oversamples the smaller class to 1:1 inside its own fit (imbalanced-learn's sampler in the pipeline): within a
grid search, in each inner training fold only, so that no copy of a sample is both trained on and scored in the
inner cross-validation.

Documented choices: the grid searches use 3-fold inner cross-validation on ROC AUC; the depth and estimator
grids take 5 values each over the published ranges (`TREE_GRID`; `grid="quick"` takes the ends only, for
tests and quick looks, and the report says which ran); the SVM's probability is the logistic of its decision
value (threshold 0.5 is the SVM's own decision; AUC depends only on the ranking); the CNN convolves along the
panel's gene order.
"""

from __future__ import annotations

import numpy as np
import torch
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import make_pipeline
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from torch import nn

from models import EXPRESSION_BASELINES
from models.training import balanced_rows

BASELINES = EXPRESSION_BASELINES
SVM_GRID = {"svc__kernel": ["linear", "poly", "rbf"], "svc__C": [1, 10, 100], "svc__gamma": [1, 0.1, 0.001]}
# The published ranges: tree depth 2-10, 10-300 estimators.
TREE_GRID = {"depth": [2, 4, 6, 8, 10], "estimators": [10, 50, 100, 200, 300]}
QUICK_TREE_GRID = {"depth": [2, 10], "estimators": [10, 300]}
GRIDS = {"published": TREE_GRID, "quick": QUICK_TREE_GRID}
CNN_EPOCHS = 60  # the 1-D CNN baseline's training epochs


def grid_search(model: object, grid: dict, x: np.ndarray, y: np.ndarray, seed: int) -> GridSearchCV:
    folds = max(2, min(3, int(np.bincount(y).min())))
    search = GridSearchCV(
        model, grid, scoring="roc_auc", cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1
    )
    return search.fit(x, y)


def oversampled(model: object, seed: int, *steps: object) -> object:
    """The smaller class drawn again until 1:1, in fitting only (the sampler passes test rows through untouched)."""
    return make_pipeline(RandomOverSampler(random_state=seed), *steps, model)


def _svm(x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    search = grid_search(oversampled(SVC(max_iter=100_000), seed, StandardScaler()), SVM_GRID, x, y, seed)
    return 1.0 / (1.0 + np.exp(-search.decision_function(test)))


def _trees(name: str, x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, grid: str) -> np.ndarray:
    values = GRIDS[grid]
    if name == "random_forest":
        model = oversampled(RandomForestClassifier(random_state=seed, n_jobs=1), seed)
        prefix = "randomforestclassifier__"
        search = {f"{prefix}max_depth": values["depth"], f"{prefix}n_estimators": values["estimators"]}
    else:
        model = oversampled(AdaBoostClassifier(DecisionTreeClassifier(random_state=seed), random_state=seed), seed)
        prefix = "adaboostclassifier__"
        search = {f"{prefix}estimator__max_depth": values["depth"], f"{prefix}n_estimators": values["estimators"]}
    return grid_search(model, search, x, y, seed).predict_proba(test)[:, 1]


class SmallCnn1d(nn.Module):
    """Three Conv1D layers along the panel, as the method's CNN baseline."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool1d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.net(values.unsqueeze(1))


def _cnn1d(x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, epochs: int = CNN_EPOCHS) -> np.ndarray:
    torch.manual_seed(seed)
    model = SmallCnn1d()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    rows = balanced_rows(y, rng)  # the training rows only: oversampled here, inside the fit
    x, y = x[rows], y[rows]
    x_all, y_all = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_all[batch]), y_all[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(test.astype(np.float32))), dim=1)[:, 1].numpy()


def fit_predict(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    test: np.ndarray,
    seed: int = 0,
    grid: str = "published",
    cnn_epochs: int = CNN_EPOCHS,
) -> np.ndarray:
    """Fit baseline `name` on the training rows (x, y), as they are (each baseline oversamples inside its own fit),
    and return responder probabilities for `test` (`cnn_epochs`: the 1-D CNN's training epochs)."""
    if name == "svm":
        return _svm(x, y, test, seed)
    if name in ("random_forest", "adaboost"):
        return _trees(name, x, y, test, seed, grid)
    if name == "cnn1d":
        return _cnn1d(x, y, test, seed, cnn_epochs)
    if name != "xgboost":
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    from xgboost import XGBClassifier

    model = XGBClassifier(n_estimators=200, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed, n_jobs=1)
    return oversampled(model, seed).fit(x, y).predict_proba(test)[:, 1]
