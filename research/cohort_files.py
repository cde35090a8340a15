"""What the response models' research commands share: cohort tables in (the rows of a CSV/TSV file, response
labels: 1/0, or RECIST CR/PR → 1 and SD/PD → 0), classification reports out (metrics.csv, ROC and
precision-recall curves as roc.png and pr.png)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.errors import CohortError

RESPONSE_LABELS = {"1": 1, "0": 0, "CR": 1, "PR": 1, "SD": 0, "PD": 0, "R": 1, "NR": 0}


def table_rows(path: Path) -> list[list[str]]:
    text = Path(path).read_text(encoding="utf-8-sig")
    delimiter = "\t" if Path(path).suffix.lower() in (".tsv", ".tab", ".txt") else ","
    return [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row]


def response_label(text: str, row: int) -> int:
    label = RESPONSE_LABELS.get(text.strip().upper())
    if label is None:
        raise CohortError(f"row {row}, column 'response': {text!r} is not 1/0 or CR/PR/SD/PD")
    return label


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    for kind in ("roc", "pr"):
        figure, axis = plt.subplots(figsize=(5, 5))
        for name, (labels, scores) in curves.items():
            if len(np.unique(labels)) < 2:
                continue
            if kind == "roc":
                x, y, _ = roc_curve(labels, scores)
                axis.plot(x, y, label=f"{name} (AUC {auc(x, y):.2f})")
            else:
                precision, recall, _ = precision_recall_curve(labels, scores)
                axis.plot(recall, precision, label=name)
        if kind == "roc":
            axis.plot([0, 1], [0, 1], ":", color="grey")
            axis.set(xlabel="1 - specificity", ylabel="sensitivity")
        else:
            axis.set(xlabel="recall", ylabel="precision")
        axis.set_title(f"{title} ({'ROC' if kind == 'roc' else 'precision-recall'})")
        axis.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
        figure.tight_layout()
        figure.savefig(out / f"{kind}.png", dpi=100)
        plt.close(figure)


def write_metrics(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def format_metric(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"
