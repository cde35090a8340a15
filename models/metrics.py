"""Classification metrics of the response models, reported per split and as the mean over splits.

Precision, recall and F1 over both classes, each twice and labelled: `*_macro`, the unweighted mean of the two
classes (as the expression-transformer paper's comparison table averages them), and `*_weighted`, weighted by
class size (weighted recall equals the accuracy). mAP is the mean of both classes' average precision (each
class's own scores). The responder-class figures are kept beside them, labelled `*_responder`, with the
sensitivity (= responder recall) and specificity the fusion method reports. Thresholded metrics use
probability >= 0.5. ROC AUC and average precision are undefined (NaN) when the evaluated labels hold one class
only; means skip NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sklearn import metrics

METRIC_NAMES = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "map",
    "sensitivity",
    "specificity",
    "precision_responder",
    "f1_responder",
    "ap_responder",
)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    both_classes = len(np.unique(labels)) == 2
    nan = float("nan")
    responder_ap = float(metrics.average_precision_score(labels, probabilities)) if labels.any() else nan
    other_ap = float(metrics.average_precision_score(1 - labels, 1 - probabilities)) if (1 - labels).any() else nan
    negatives = labels == 0
    # Per class (non-responder, responder) once; the macro and weighted means are sklearn's averages of these
    # (the bootstrap evaluates this for every resample: one call instead of nine).
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=[0, 1], average=None, zero_division=0
    )
    averaged = {
        f"{name}_{average}": float(np.average(per_class, weights=support if average == "weighted" else None))
        for average in ("macro", "weighted")
        for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1))
    }
    return {
        "accuracy": float(np.mean(labels == predicted)),
        **averaged,
        "roc_auc": float(metrics.roc_auc_score(labels, probabilities)) if both_classes else nan,
        "map": float(np.mean([responder_ap, other_ap])) if both_classes else nan,
        "sensitivity": float(recall[1]),
        "specificity": float((predicted[negatives] == 0).mean()) if negatives.any() else nan,
        "precision_responder": float(precision[1]),
        "f1_responder": float(f1[1]),
        "ap_responder": responder_ap,
    }


def mean_metrics(per_split: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over splits."""
    means = {}
    for name in METRIC_NAMES:
        values = np.array([row[name] for row in per_split], dtype=float)
        means[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return means


def bootstrap_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    metrics: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every metric `metrics` returns, over resampled patients (each resample
    evaluated once for all metrics); resamples with one class are skipped."""
    rng = np.random.default_rng(seed)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    values: dict[str, list[float]] = {}
    for _ in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[rows])) < 2:
            continue
        for name, value in metrics(labels[rows], probabilities[rows]).items():
            values.setdefault(name, []).append(value)
    tail = (1.0 - level) / 2.0 * 100.0
    intervals = {}
    for name, found in values.items():
        low, high = np.nanpercentile(found, [tail, 100.0 - tail]) if not np.isnan(found).all() else (np.nan, np.nan)
        intervals[name] = (float(low), float(high))
    return intervals


def bootstrap_interval(
    labels: np.ndarray,
    probabilities: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of one `metric` (see `bootstrap_intervals`)."""
    found = bootstrap_intervals(labels, probabilities, lambda y, p: {"m": metric(y, p)}, resamples, level, seed)
    return found.get("m", (float("nan"), float("nan")))
