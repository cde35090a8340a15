"""Reproduction reports (`immunode reproduce cytact|radiomics|amu|fusion --cohort ...`): the node's figures on a
user's cohort beside the headline numbers the method's paper reports, with what differs in how they were
obtained. The papers' values are cited as published; where this repository does not hold them (the attention
fusion), the user gives them (`--published NAME=VALUE`) or the report says they are not given.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from research.errors import ResearchError


@dataclass(frozen=True)
class Figure:
    name: str
    published: float | None  # None: not given
    ours: float | None  # None: not computed on this cohort
    note: str = ""


METHODS = {
    "cytact": "FDG-PET immune profiling: lesion CytAct from PET, patient minimum and variance, outcome",
    "radiomics": "Longitudinal CT delta-radiomics of oligo vs systemic acquired resistance (Mazzaschi et al., "
    "Clin Cancer Res 2025, doi:10.1158/1078-0432.CCR-24-1926, Table 2)",
    "amu": "Expression transformer over tumour mRNA for ICI response",
    "fusion": "Attention late fusion of histology, genomic and clinical embeddings for ICI response",
}
# Headline figures as the papers report them.
PUBLISHED_CYTACT = {"Cox HR PFS, high vs low minimum CytAct": 0.25, "Cox HR OS, high vs low minimum CytAct": 0.18}
PUBLISHED_AMU = {
    "held-out test ROC AUC (the fair comparison)": 0.672,
    "ROC AUC with upsampling before the split": 0.960,
    "accuracy with upsampling before the split": 0.941,
    "parameters (160-gene panel)": 83_462,
}


def _value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def write_comparison(method: str, figures: Sequence[Figure], notes: Sequence[str], out: Path) -> Path:
    if method not in METHODS:
        raise ResearchError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Reproduction: {method}",
        "",
        f"Method: {METHODS[method]}. RESEARCH USE ONLY: figures on this cohort beside the paper's headline numbers.",
        "",
        "| figure | paper | this cohort | note |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f.name} | {_value(f.published)} | {_value(f.ours)} | {f.note} |" for f in figures]
    lines += ["", *notes, ""]
    report = out / "comparison.md"
    report.write_text("\n".join(lines))
    return report


def cytact_figures(cox: Mapping[str, tuple[float, float, float, float]], auc: Mapping[str, float]) -> list[Figure]:
    figures = []
    for name, published in PUBLISHED_CYTACT.items():
        endpoint = "pfs" if "PFS" in name else "os"
        ours = cox.get(f"high vs low CytAct {endpoint}")
        note = f"95 % CI {ours[1]:.2f}-{ours[2]:.2f}, p {ours[3]:.3g}" if ours else "not estimable on this cohort"
        figures.append(Figure(name, published, ours[0] if ours else None, note))
    figures += [Figure(f"ROC AUC for response, {k.removeprefix('cytact_')}", None, v, "") for k, v in auc.items()]
    return figures


def published_signature(path: Path) -> dict[str, dict[str, float | None]]:
    """Feature → published AUC, its CI and the group medians (the supplement table's columns)."""

    def number(text: str) -> float | None:
        try:
            return float(text.lstrip("<"))
        except ValueError:
            return None

    with Path(path).open(newline="", encoding="utf-8") as handle:
        return {
            row["feature"]: {key: number(row.get(key, "")) for key in ("auc", "auc_ci_low", "auc_ci_high")}
            for row in csv.DictReader(handle)
        }


def radiomics_figures(tests: Sequence[object], published: Mapping[str, Mapping[str, float | None]]) -> list[Figure]:
    """Each published feature's AUC beside ours (systemic positive; the paper's AUC is orientation-free, so ours
    is reported as max(AUC, 1 - AUC) beside it, with the direction noted)."""
    ours = {t.feature: t for t in tests}  # type: ignore[attr-defined]
    figures = []
    for name, values in published.items():
        test = ours.get(name)
        if test is None:
            figures.append(
                Figure(f"AUC {name}", values.get("auc"), None, "not in this cohort, or filtered as redundant")
            )
            continue
        oriented = max(test.auc, 1 - test.auc)
        direction = "higher in systemic" if test.auc >= 0.5 else "higher in oligo"
        note = f"{direction}; MW p {test.mann_whitney_p:.3g}, permutation p {test.permutation_p:.3g}"
        figures.append(Figure(f"AUC {name}", values.get("auc"), oriented, note + (" *" if test.significant else "")))
    return figures


def amu_figures(means: Mapping[str, float], parameters: int) -> list[Figure]:
    return [
        Figure("held-out test ROC AUC (the fair comparison)", 0.672, means.get("roc_auc"), "mean over held-out splits"),
        Figure("ROC AUC with upsampling before the split", 0.960, None, "not done here: it leaks test samples"),
        Figure("accuracy with upsampling before the split", 0.941, None, "not done here: it leaks test samples"),
        Figure("accuracy (held out)", None, means.get("accuracy"), ""),
        Figure("parameters (160-gene panel)", 83_462, parameters, "this model, this panel"),
    ]


def fusion_figures(metrics: Mapping[str, Mapping[str, float]], published: Mapping[str, float]) -> list[Figure]:
    figures = []
    for model in ("attention", "concat", "clinical-only", "histology-only", "imaging-only", "genomic-only"):
        if model in metrics:
            figures.append(
                Figure(f"{model} test ROC AUC", published.get(f"{model}_auc"), metrics[model].get("roc_auc"), "")
            )
    return figures


def parse_published(items: Sequence[str]) -> dict[str, float]:
    """NAME=VALUE pairs given on the command line (e.g. attention_auc=0.8)."""
    values = {}
    for item in items:
        name, _, text = item.partition("=")
        try:
            values[name.strip()] = float(text)
        except ValueError:
            raise ResearchError(f"--published {item!r}: give NAME=VALUE with a number") from None
    return values
