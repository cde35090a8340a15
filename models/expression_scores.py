"""Expression-derived targets of the PET immune-profiling method: CytAct = mean of the z-scored log2
expression of GZMA and PRF1; the 6-gene IFN-gamma score = mean z-score of IDO1, CXCL9, CXCL10, IFNG,
HLA-DRA and STAT1. z-scores are across the samples of the file (log2(x + 1), mean 0, sample SD 1)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ModelError

CYTACT_GENES = ("GZMA", "PRF1")
IFNG_GENES = ("IDO1", "CXCL9", "CXCL10", "IFNG", "HLA-DRA", "STAT1")


@dataclass(frozen=True)
class ExpressionTable:
    genes: tuple[str, ...]
    samples: tuple[str, ...]
    values: np.ndarray  # genes × samples
    orientation: str  # how the file was laid out, as detected


def read_expression(path: Path) -> ExpressionTable:
    """CSV or TSV with gene symbols in the first column (genes × samples) or in the header (samples × genes)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    dialect = "excel-tab" if text.split("\n", 1)[0].count("\t") > text.split("\n", 1)[0].count(",") else "excel"
    rows = [row for row in csv.reader(text.splitlines(), dialect=dialect) if row]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise ModelError(f"{path}: needs a header row and at least one data row with two columns")
    header, body = rows[0], rows[1:]
    known = set(CYTACT_GENES + IFNG_GENES)
    samples_by_genes = len(known & {h.strip().upper() for h in header[1:]}) > len(
        known & {r[0].strip().upper() for r in body}
    )
    try:
        matrix = np.array([[float(v) for v in row[1:]] for row in body], dtype=float)
    except ValueError as error:
        raise ModelError(f"{path}: non-numeric expression value ({error})") from None
    if samples_by_genes:
        genes, samples, matrix, orientation = header[1:], [r[0] for r in body], matrix.T, "samples x genes"
    else:
        genes, samples, orientation = [r[0] for r in body], header[1:], "genes x samples"
    genes = [g.strip().upper() for g in genes]
    duplicated = sorted({g for g in genes if genes.count(g) > 1})
    if duplicated:
        raise ModelError(f"{path}: duplicate genes: {', '.join(duplicated)}")
    return ExpressionTable(tuple(genes), tuple(s.strip() for s in samples), matrix, orientation)


def _z_scores(table: ExpressionTable, genes: tuple[str, ...]) -> np.ndarray:
    missing = [g for g in genes if g not in table.genes]
    if missing:
        raise ModelError(f"genes missing from the expression table: {', '.join(missing)}")
    if len(table.samples) < 2:
        raise ModelError("z-scores need at least two samples")
    rows = np.log2(table.values[[table.genes.index(g) for g in genes]] + 1.0)
    spread = rows.std(axis=1, ddof=1, keepdims=True)
    if np.any(spread == 0):
        raise ModelError("a score gene has the same expression in every sample")
    return (rows - rows.mean(axis=1, keepdims=True)) / spread


def cytact_scores(table: ExpressionTable) -> dict[str, tuple[float, float | None]]:
    """Per sample: (CytAct, IFN-gamma 6-gene score or None when those genes are absent)."""
    cytact = _z_scores(table, CYTACT_GENES).mean(axis=0)
    ifng = _z_scores(table, IFNG_GENES).mean(axis=0) if set(IFNG_GENES) <= set(table.genes) else None
    return {
        sample: (float(cytact[i]), None if ifng is None else float(ifng[i])) for i, sample in enumerate(table.samples)
    }


# Sample-intrinsic scores, stored with each imported profile (they need no cohort to z-score against).
CYTACT_PSEUDOCOUNT = 0.01


def per_million(values: dict[str, float]) -> dict[str, float]:
    """Values scaled to parts per million of the sample's total (TPM stays TPM; counts become CPM)."""
    total = sum(values.values())
    return {gene: value * 1e6 / total for gene, value in values.items()} if total > 0 else dict(values)


def sample_cytact(per_million_values: dict[str, float]) -> float | None:
    """Rooney et al. 2015: geometric mean of GZMA and PRF1 (TPM, pseudocount 0.01); None if either is absent."""
    if not all(gene in per_million_values for gene in CYTACT_GENES):
        return None
    return float(np.sqrt(np.prod([per_million_values[g] + CYTACT_PSEUDOCOUNT for g in CYTACT_GENES])))


def sample_ifng6(per_million_values: dict[str, float]) -> float | None:
    """Ayers et al. 2017 6-gene IFN-gamma score as the mean log2(TPM + 1) of its genes; None if any is absent."""
    if not all(gene in per_million_values for gene in IFNG_GENES):
        return None
    return float(np.mean([np.log2(per_million_values[g] + 1.0) for g in IFNG_GENES]))
