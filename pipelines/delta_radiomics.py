"""Delta-radiomics of the longitudinal CT method: Δ = (T1 − T0)/T0 per feature of the primary (P) and the
merged metastases (M); the published signature that separated oligo- from systemic progression; and the
research statistics of the method (Spearman redundancy filter, Mann–Whitney, median-difference permutation
test, ROC AUC) behind `immunode analyse-radiomics`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import PipelineError
from pipelines.types import DeltaFeature, relative_change


class SignatureFileError(PipelineError):
    """The published signature table cannot be read."""


@dataclass(frozen=True)
class PublishedFeature:
    name: str
    oligo_median: float
    systemic_median: float
    auc: float | None


def read_published_signature(path: Path) -> tuple[PublishedFeature, ...]:
    """The published Δ features (columns feature, oligoAR_median, sysAR_median, auc)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        features = []
        for row in rows:
            auc = row.get("auc", "")
            features.append(
                PublishedFeature(
                    row["feature"],
                    float(row["oligoAR_median"]),
                    float(row["sysAR_median"]),
                    float(auc) if auc else None,
                )
            )
    except (OSError, KeyError, ValueError) as error:
        raise SignatureFileError(f"published signature {path}: {error.__class__.__name__}: {error}") from None
    if not features:
        raise SignatureFileError(f"published signature {path}: no rows")
    return tuple(features)


def deltas(
    t0: Mapping[str, Mapping[str, float]], t1: Mapping[str, Mapping[str, float]], volumes: Sequence[str] = ("P", "M")
) -> dict[str, float | None]:
    """Δ of every feature present at both time points, named "<volume>_<pyradiomics name>"."""
    result: dict[str, float | None] = {}
    for volume in volumes:
        before, after = t0.get(volume, {}), t1.get(volume, {})
        for name in sorted(set(before) & set(after)):
            result[f"{volume}_{name}"] = relative_change(before[name], after[name])
    return result


def _value(features: Mapping[str, Mapping[str, float]], name: str) -> float | None:
    volume, feature = name.split("_", 1)
    return features.get(volume, {}).get(feature)


def signature_features(
    published: Sequence[PublishedFeature],
    t0: Mapping[str, Mapping[str, float]],
    t1: Mapping[str, Mapping[str, float]],
) -> tuple[DeltaFeature, ...]:
    """Each published feature's T0, T1, Δ and the published group median it lies nearer to."""
    out = []
    for feature in published:
        before, after = _value(t0, feature.name), _value(t1, feature.name)
        delta = relative_change(before, after)
        if before is None or after is None:
            volume = feature.name.split("_", 1)[0]
            why = f"no {volume} volume at {'T0' if before is None else 'T1'}"
        elif delta is None:
            why = "baseline value 0 and follow-up value not 0: relative change not defined"
        else:
            why = ""
        nearer = ""
        if delta is not None:
            d_oligo, d_sys = abs(delta - feature.oligo_median), abs(delta - feature.systemic_median)
            nearer = "oligo" if d_oligo < d_sys else "systemic" if d_sys < d_oligo else "equidistant"
        out.append(
            DeltaFeature(
                feature.name,
                before,
                after,
                delta,
                feature.oligo_median,
                feature.systemic_median,
                feature.auc,
                nearer,
                why,
            )
        )
    return tuple(out)


# --- research statistics (analyse-radiomics) ------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureTest:
    feature: str
    n_oligo: int
    n_systemic: int
    median_oligo: float
    median_systemic: float
    mann_whitney_p: float
    permutation_p: float
    auc: float  # systemic as the positive class


def redundancy_filter(table: np.ndarray, names: Sequence[str], threshold: float = 0.99) -> list[str]:
    """Spearman |rho| >= threshold: keep the first feature (in the given order) of each redundant set."""
    from scipy.stats import spearmanr

    if table.shape[1] < 2:
        return list(names)
    rho = np.atleast_2d(spearmanr(table, nan_policy="omit").statistic)
    kept: list[int] = []
    for j in range(len(names)):
        if np.all(np.isnan(table[:, j])) or np.nanstd(table[:, j]) == 0:
            continue  # constant: carries no information
        if all(not (abs(rho[j, k]) >= threshold) for k in kept):
            kept.append(j)
    return [names[j] for j in kept]


def permutation_p(a: np.ndarray, b: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided permutation test of the difference in medians (the observed split counted once)."""
    observed = abs(np.median(a) - np.median(b))
    pooled = np.concatenate([a, b])
    hits = 0
    for _ in range(permutations):
        shuffled = rng.permutation(pooled)
        if abs(np.median(shuffled[: len(a)]) - np.median(shuffled[len(a) :])) >= observed - 1e-12:
            hits += 1
    return (hits + 1) / (permutations + 1)


def feature_tests(
    table: np.ndarray, names: Sequence[str], systemic: np.ndarray, permutations: int = 1000, seed: int = 0
) -> list[FeatureTest]:
    """Mann–Whitney U, median-difference permutation test and ROC AUC per feature, sorted by p value."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    results = []
    for j, name in enumerate(names):
        values = table[:, j]
        ok = ~np.isnan(values)
        a, b = values[ok & ~systemic], values[ok & systemic]
        if len(a) < 2 or len(b) < 2:
            continue
        results.append(
            FeatureTest(
                name,
                len(a),
                len(b),
                float(np.median(a)),
                float(np.median(b)),
                float(mannwhitneyu(a, b, alternative="two-sided").pvalue),
                permutation_p(a, b, permutations, rng),
                float(roc_auc_score(systemic[ok], values[ok])),
            )
        )
    return sorted(results, key=lambda r: (r.mann_whitney_p, r.feature))
