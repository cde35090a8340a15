"""Research tooling of the delta-radiomics method (`immunode analyse-radiomics`, `immunode train ar-signature`):
Δ feature tables from the store or a CSV, the method's preprocessing and statistics, and the classifier.

Table CSV: PatientID, IssuerOfPatientID (optional), pattern ("oligo" or "systemic"), then one column per Δ
feature named as in the SR ("P_original_glcm_ClusterTendency", "M_..."). Empty cells are undefined Δ.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from research.errors import DeltaTableError
from storage.types import DeltaRow

if TYPE_CHECKING:
    from models.ar_signature import ArSignature

PATTERNS = ("oligo", "systemic")
ID_COLUMNS = ("PatientID", "IssuerOfPatientID", "pattern")


@dataclass(frozen=True, eq=False)
class DeltaTable:
    patients: tuple[tuple[str, str], ...]
    systemic: np.ndarray  # bool per patient
    features: tuple[str, ...]
    values: np.ndarray  # [patient, feature], NaN where undefined


def _float(text: str, where: str) -> float:
    if text.strip() == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DeltaTableError(f"{where}: {text!r} is not a number") from None


def _pattern(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value not in PATTERNS:
        raise DeltaTableError(f"{where}: pattern must be oligo or systemic, got {text!r}")
    return value == "systemic"


def read_labels(path: Path) -> dict[tuple[str, str], bool]:
    """PatientID, IssuerOfPatientID, pattern → systemic?"""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = {}
    for number, row in enumerate(rows, start=2):
        if "PatientID" not in row or "pattern" not in row:
            raise DeltaTableError(f"{path}: needs columns PatientID and pattern")
        key = (row["PatientID"].strip(), (row.get("IssuerOfPatientID") or "").strip())
        labels[key] = _pattern(row["pattern"], f"{path.name}: row {number}, column 'pattern'")
    return labels


def read_table(path: Path) -> DeltaTable:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        names = [n for n in (reader.fieldnames or []) if n not in ID_COLUMNS]
        if "PatientID" not in (reader.fieldnames or []) or "pattern" not in (reader.fieldnames or []):
            raise DeltaTableError(f"{path}: needs columns PatientID, pattern and Δ features")
        patients, systemic, values = [], [], []
        for number, row in enumerate(reader, start=2):
            patients.append((row["PatientID"].strip(), (row.get("IssuerOfPatientID") or "").strip()))
            systemic.append(_pattern(row["pattern"], f"{path.name}: row {number}, column 'pattern'"))
            values.append([_float(row[n] or "", f"{path.name}: row {number}, column {n!r}") for n in names])
    return DeltaTable(tuple(patients), np.array(systemic, dtype=bool), tuple(names), np.array(values, dtype=float))


def table_from_store(rows: Sequence[DeltaRow], labels: dict[tuple[str, str], bool] | None) -> DeltaTable:
    """Rows of `storage.results.delta_table`; the node's own pattern unless labels are given (then only
    labelled patients are used)."""
    patients, systemic, dicts = [], [], []
    for row in rows:
        key, pattern, deltas = (row.patient_id, row.issuer_of_patient_id), row.pattern, row.deltas
        if labels is not None:
            if key not in labels:
                continue
            label = labels[key]
        elif pattern in PATTERNS:
            label = pattern == "systemic"
        else:
            continue  # no new or progressive lesion: neither group
        patients.append(key)
        systemic.append(label)
        dicts.append(deltas)
    names = sorted(set().union(*dicts)) if dicts else []
    values = np.array([[np.nan if d.get(n) is None else d[n] for n in names] for d in dicts], dtype=float)
    return DeltaTable(
        tuple(patients), np.array(systemic, dtype=bool), tuple(names), values.reshape(len(dicts), len(names))
    )


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


def analyse(
    table: DeltaTable, out: Path, permutations: int = 1000, seed: int = 0
) -> tuple[list[str], list[FeatureTest]]:
    """Redundancy filter, then per-feature tests; writes feature_tests.csv and kept_features.txt."""
    if table.systemic.sum() < 2 or (~table.systemic).sum() < 2:
        raise DeltaTableError("need at least two patients of each pattern (oligo and systemic)")
    kept = redundancy_filter(table.values, table.features)
    columns = [table.features.index(name) for name in kept]
    results = feature_tests(table.values[:, columns], kept, table.systemic, permutations, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kept_features.txt").write_text("\n".join(kept) + "\n")
    with (out / "feature_tests.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(FeatureTest.__dataclass_fields__))
        writer.writeheader()
        for result in results:
            writer.writerow(asdict(result))
    return kept, results


def relabelled(table: DeltaTable, labels: dict[tuple[str, str], bool]) -> DeltaTable:
    """Only the labelled patients, with the given patterns."""
    keep = [i for i, patient in enumerate(table.patients) if patient in labels]
    return DeltaTable(
        tuple(table.patients[i] for i in keep),
        np.array([labels[table.patients[i]] for i in keep], dtype=bool),
        table.features,
        table.values[keep],
    )


def train_signature(table: DeltaTable, features: Sequence[str]) -> tuple[ArSignature, dict]:
    """Fit the classifier on patients whose Δ is defined for every named feature; training metrics."""
    from sklearn.metrics import roc_auc_score

    from models import ar_signature

    missing = [f for f in features if f not in table.features]
    if missing:
        raise DeltaTableError(f"features not in the table: {', '.join(missing)}")
    values = table.values[:, [table.features.index(f) for f in features]]
    complete = ~np.isnan(values).any(axis=1)
    signature = ar_signature.fit(values[complete], features, table.systemic[complete])
    predicted = [signature.probability_systemic(dict(zip(features, row))) for row in values[complete]]
    metrics = {
        "patients": int(complete.sum()),
        "left_out_undefined": int((~complete).sum()),
        "training_auc": float(roc_auc_score(table.systemic[complete], predicted)),
    }
    return signature, metrics
