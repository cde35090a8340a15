"""The papers' figures are quoted in one place, research/published_figures.csv: the table is well formed, the docs
show it as it is, and no report source, doc or the README attributes to a paper a figure the table does not hold
on that metric.

What counts as a figure attributed to a paper (`attributed_figures`): a decimal number or a number with thousands
separators that has a paper-attribution word ("paper", "published", "the method's", an author or a paper key)
in the 150 characters before it or the 60 after, and a metric word (AUC/ROC, mAP, F1, accuracy, HR/hazard ratio,
rho/Spearman, parameters) within 60 characters before it or 25 after; the metric is the nearest such word. The
table must hold that value on a metric of that kind. Line breaks count as spaces, so a sentence wrapped over
lines, or a string split over source lines, is read whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from research import published

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("docs", "research", "models", "pipelines", "immunode", "common", "storage", "dicom_node")
GENERATED = ROOT / "docs" / "methods" / "published-figures.md"
ATTRIBUTION = re.compile(
    r"(?i)\b(papers?|published|publishes|the method's|as the method|park et al|yin et al|mazzaschi et al|"
    + "|".join(published.PAPERS)
    + r")\b"
)
METRIC_KINDS = {
    "auc": re.compile(r"\bAUCs?\b|\bROC\b"),
    "map": re.compile(r"\bmAP\b"),
    "f1": re.compile(r"\bF1\b"),
    "accuracy": re.compile(r"(?i)\baccuracy\b"),
    "hr": re.compile(r"\bHRs?\b|(?i:hazard ratios?)"),
    "rho": re.compile(r"(?i)\brho\b|\bspearman\b"),
    "parameters": re.compile(r"(?i)\bparameters\b"),
}
NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d*\.\d+)(?!\w)")
# The node's own figures that stand next to the paper's; each with why it is not the paper's.
THE_NODES_OWN = {
    ("docs/methods/response-models.md", "133,474"): "the node's model size, printed beside the paper's",
}


@dataclass(frozen=True)
class Quoted:
    path: str
    line: int
    number: str
    kind: str
    context: str

    @property
    def value(self) -> float:
        return float(self.number.replace(",", "").replace("−", "-"))


def _kinds(metric: str) -> set[str]:
    return {kind for kind, pattern in METRIC_KINDS.items() if pattern.search(metric)}


def attributed_figures(path: Path, root: Path = ROOT) -> list[Quoted]:
    text = path.read_text(encoding="utf-8")
    flat = text.replace("\n", " ")
    found = []
    for match in NUMBER.finditer(flat):
        start, end = match.span()
        if not ATTRIBUTION.search(flat[max(0, start - 150) : end + 60]):
            continue
        distances = {}
        for kind, pattern in METRIC_KINDS.items():
            before = [start - m.end() for m in pattern.finditer(flat, max(0, start - 60), start)]
            after = [m.start() - end for m in pattern.finditer(flat, end, end + 25)]
            if before or after:
                distances[kind] = min(before + after)
        if distances:
            kind = min(distances, key=lambda k: distances[k])
            line = text.count("\n", 0, start) + 1
            context = flat[max(0, start - 80) : end + 40]
            found.append(Quoted(str(path.relative_to(root)), line, match.group(), kind, context))
    return found


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md") and p != GENERATED]
    return sorted(files)


def not_in_the_table(quoted: list[Quoted]) -> list[Quoted]:
    table = published.load()
    return [
        q
        for q in quoted
        if (q.path, q.number) not in THE_NODES_OWN
        and not any(abs(f.value - q.value) < 1e-9 and q.kind in _kinds(f.metric) for f in table)
    ]


def test_no_figure_is_attributed_to_a_paper_outside_the_table() -> None:
    quoted = [q for path in _scanned_files() for q in attributed_figures(path)]
    assert quoted, "the scan finds the quotations that are there (the parameters beside the paper's, ...)"
    problems = [f"{q.path}:{q.line}: {q.number} as {q.kind}: ...{q.context}..." for q in not_in_the_table(quoted)]
    assert problems == []


def test_the_scan_catches_the_misquotes_it_was_written_for(tmp_path: Path) -> None:
    """The expression paper's validation AUC (0.941) and mAP (0.960) once stood in the docs as accuracy and AUC; a
    hazard ratio the paper does not give is caught; the same figures quoted right pass."""
    wrong = tmp_path / "wrong.md"
    wrong.write_text(
        "The report states that the paper's 0.941 accuracy / 0.960 AUC came from upsampling.\n"
        "The paper reports PFS HR 0.52.\n"
    )
    problems = {(q.number, q.kind) for q in not_in_the_table(attributed_figures(wrong, tmp_path))}
    assert problems == {("0.941", "accuracy"), ("0.960", "auc"), ("0.52", "hr")}
    right = tmp_path / "right.md"
    right.write_text(
        "The paper reports a validation AUC of 0.941 and mAP 0.960, a test AUC 0.672, PFS HR 0.25 and OS HR 0.18,\n"
        "with 83,462 parameters. Our model has 0.99 AUC on a line that names no source.\n"
    )
    quoted = attributed_figures(right, tmp_path)
    assert {q.number for q in quoted} >= {"0.941", "0.960", "0.672", "0.25", "0.18", "83,462"}
    assert not_in_the_table(quoted) == []


def test_the_table_is_well_formed() -> None:
    figures = published.load()
    assert {f.paper for f in figures} == set(published.PAPERS)
    for f in figures:
        assert f.where == published.NOT_VERIFIED or re.match(r"(Abstract|Table \d+|Figure \d+)$", f.where), f
        assert f.page == published.NOT_VERIFIED or re.match(r"(\d+|article \d+)$", f.page), f
        if f.verified:  # a place is verified only where it was checked against the paper
            assert "checked" in f.source and "not checked" not in f.source, f
    # The figures issue 21 corrected, as the papers give them.
    amu = {f.key: f.text for f in published.figures("yin2025")}
    assert (amu["val_auc"], amu["val_map"], amu["val_f1"], amu["test_auc"], amu["test_map"]) == (
        "0.941",
        "0.960",
        "0.930",
        "0.672",
        "0.800",
    )
    assert published.figure("park2020", "hr_pfs").value == 0.25 and published.figure("park2020", "auc_min").text
    with pytest.raises(published.UnknownFigure):
        published.figure("park2020", "no such figure")


def test_the_docs_show_the_table_as_it_is() -> None:
    assert GENERATED.read_text(encoding="utf-8").strip() == published.markdown().strip(), (
        "regenerate: python -m research.published > docs/methods/published-figures.md"
    )
