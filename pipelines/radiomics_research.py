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

import numpy as np

from pipelines.delta_radiomics import FeatureTest, feature_tests, redundancy_filter
from pipelines.errors import PipelineError

PATTERNS = ("oligo", "systemic")
ID_COLUMNS = ("PatientID", "IssuerOfPatientID", "pattern")


class DeltaTableError(PipelineError):
    """A Δ table or label file cannot be used; the message names the file, row and column."""


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


def table_from_store(
    rows: Sequence[tuple[str, str, str, dict]], labels: dict[tuple[str, str], bool] | None
) -> DeltaTable:
    """Rows of `storage.radiomics.delta_table`; the node's own pattern unless labels are given (then only
    labelled patients are used)."""
    patients, systemic, dicts = [], [], []
    for patient_id, issuer, pattern, deltas in rows:
        key = (patient_id, issuer)
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


def train_signature(table: DeltaTable, features: Sequence[str]):  # noqa: ANN201 - (ArSignature, metrics)
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
