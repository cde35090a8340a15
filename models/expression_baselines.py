"""The baselines the expression-transformer method was compared against, fitted on the same splits and the
same preprocessed panel features: SVM (grid search over kernel, C and gamma), random forest, AdaBoost,
XGBoost and a small 1-D CNN. Each returns responder probabilities for the held-out samples.

Documented choices: the SVM's probability is the logistic of its decision value (threshold 0.5 is the SVM's
own decision; AUC depends only on the ranking), its grid search uses 3-fold inner cross-validation on ROC AUC;
the 1-D CNN convolves along the panel's gene order.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from models import EXPRESSION_BASELINES

BASELINES = EXPRESSION_BASELINES
SVM_GRID = {"svc__kernel": ["linear", "poly", "rbf"], "svc__C": [1, 10, 100], "svc__gamma": [1, 0.1, 0.001]}


def _svm(x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    folds = max(2, min(3, int(np.bincount(y).min())))
    search = GridSearchCV(
        make_pipeline(StandardScaler(), SVC(max_iter=100_000)),
        SVM_GRID,
        scoring="roc_auc",
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        n_jobs=1,
    )
    search.fit(x, y)
    return 1.0 / (1.0 + np.exp(-search.decision_function(test)))


class SmallCnn1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveMaxPool1d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.net(values.unsqueeze(1))


def _cnn1d(x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, epochs: int = 60) -> np.ndarray:
    torch.manual_seed(seed)
    model = SmallCnn1d()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_all, y_all = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    rng = np.random.default_rng(seed)
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


def fit_predict(name: str, x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fit baseline `name` on (x, y) and return responder probabilities for `test`."""
    if name == "svm":
        return _svm(x, y, test, seed)
    if name == "random_forest":
        model = RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1)
    elif name == "adaboost":
        model = AdaBoostClassifier(n_estimators=200, random_state=seed)
    elif name == "xgboost":
        from xgboost import XGBClassifier

        model = XGBClassifier(
            n_estimators=200, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed, n_jobs=1
        )
    elif name == "cnn1d":
        return _cnn1d(x, y, test, seed)
    else:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    model.fit(x, y)
    return model.predict_proba(test)[:, 1]
