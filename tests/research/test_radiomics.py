"""The redundancy filter of the delta-radiomics method on its eight datasets (resistance group x time point x
volume, on the feature values at T0 and T1), checked on a table whose redundancies are planted by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from research.errors import DeltaTableError
from research.radiomics import filter_statement, filtered_features, paper_datasets, read_table

# Four oligo and four systemic patients. Planted, by hand:
# - P_b = 2 x P_a in the oligo T0 dataset only (Spearman rho 1 there; -0.4, 0 and -0.8 in the other three);
# - P_c is constant in the systemic T1 dataset (it carries no information there);
# - M_y = -M_x in every dataset.
# Every other pair has |rho| <= 0.8 in each dataset (n = 4: rho is a multiple of 0.2).
VALUES = {
    ("oligo", "T0"): {"P_a": [1, 2, 3, 4], "P_b": [2, 4, 6, 8], "P_c": [4, 1, 2, 3], "M_x": [1, 3, 2, 4]},
    ("oligo", "T1"): {"P_a": [4, 1, 3, 2], "P_b": [1, 2, 3, 4], "P_c": [2, 4, 1, 3], "M_x": [2, 1, 4, 3]},
    ("systemic", "T0"): {"P_a": [1, 2, 3, 4], "P_b": [3, 1, 4, 2], "P_c": [2, 3, 4, 1], "M_x": [4, 1, 3, 2]},
    ("systemic", "T1"): {"P_a": [2, 1, 4, 3], "P_b": [4, 3, 1, 2], "P_c": [7, 7, 7, 7], "M_x": [1, 2, 3, 4]},
}
FEATURES = ("P_a", "P_b", "P_c", "M_x", "M_y")


def _value(group: str, time_point: str, feature: str, i: int) -> float:
    if feature == "M_y":
        return -float(VALUES[(group, time_point)]["M_x"][i])
    return float(VALUES[(group, time_point)][feature][i])


def _write(path: Path, with_time_points: bool = True) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        raw = [f"{t}_{f}" for t in ("T0", "T1") for f in FEATURES] if with_time_points else []
        writer.writerow(["PatientID", "pattern", *FEATURES, *raw])
        for group in ("oligo", "systemic"):
            for i in range(4):
                t0 = [_value(group, "T0", f, i) for f in FEATURES]
                t1 = [_value(group, "T1", f, i) for f in FEATURES]
                deltas = [(b - a) / a for a, b in zip(t0, t1)]
                writer.writerow([f"{group}{i}", group, *deltas, *((t0 + t1) if with_time_points else [])])
    return path


def test_the_filter_runs_on_the_papers_eight_datasets(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path / "table.csv"))
    datasets = paper_datasets(table)
    assert sorted(datasets) == sorted(f"{g} {t} {v}" for g in ("oligo", "systemic") for t in ("T0", "T1") for v in "PM")
    values, columns = datasets["oligo T0 P"]
    assert [table.features[c] for c in columns] == ["P_a", "P_b", "P_c"]
    assert values[:, 1].tolist() == [2.0, 4.0, 6.0, 8.0]  # the oligo patients' P_b at T0
    # Kept in every dataset of its volume: P_b falls (redundant with P_a in oligo T0), P_c falls (constant in
    # systemic T1), M_y falls (= -M_x everywhere).
    assert filtered_features(table) == ["P_a", "M_x"]
    # Kept in at least one dataset: only M_y, redundant everywhere, falls.
    assert filtered_features(table, merge="any") == ["P_a", "P_b", "P_c", "M_x"]
    assert "the paper's eight datasets" in filter_statement(table)


def test_a_delta_only_table_is_filtered_on_delta_and_says_it_is_not_the_papers_datasets(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path / "deltas.csv", with_time_points=False))
    assert table.t0 is None and table.t1 is None
    with pytest.raises(DeltaTableError, match="no T0/T1 values"):
        paper_datasets(table)
    # On Δ the planted T0 redundancy of P_b is invisible: it stays; M_y (Δ equal to M_x's) falls.
    kept = filtered_features(table)
    assert "P_b" in kept and "M_y" not in kept
    assert "NOT the paper's datasets" in filter_statement(table)


def test_time_point_columns_must_be_complete(tmp_path: Path) -> None:
    path = tmp_path / "partial.csv"
    path.write_text("PatientID,pattern,P_a,T0_P_a\nA,oligo,0.1,1\n")
    with pytest.raises(DeltaTableError, match="T0_/T1_ columns"):
        read_table(path)
    assert np.isnan(read_table(_write(tmp_path / "t.csv")).t0).sum() == 0
