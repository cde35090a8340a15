"""The papers' reported figures, quoted in one place: `research/published_figures.csv`, one row per figure (paper,
key, where in the paper, page, metric, split, value, source). Every `immunode reproduce ...` report, the training
reports and docs/methods/published-figures.md read them from here; a test holds the docs to the table and greps the
reports' sources and the docs for figures attributed to a paper that the table does not hold.

Where a figure's table/figure or page could not be checked against the paper, the row says "not verified", and its
`source` says where the number came from. A figure is never filled in from memory: the fusion method's paper is
not identified in this repository, so the table holds none of its figures (`reproduce fusion --published` takes
them from the user).

`python -m research.published` prints the table as markdown (docs/methods/published-figures.md).
"""

from __future__ import annotations

import csv
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("published_figures.csv")
NOT_VERIFIED = "not verified"
COLUMNS = ("paper", "key", "where", "page", "metric", "split", "value", "source")


@dataclass(frozen=True)
class Paper:
    key: str
    method: str  # the `reproduce` method it is the paper of
    citation: str
    doi: str


PAPERS = {
    paper.key: paper
    for paper in (
        Paper(
            "park2020",
            "cytact",
            "Park C, Na KJ, Choi H, Ock CY, et al. Tumor immune profiles noninvasively estimated by FDG PET with deep "
            "learning correlate with immunotherapy response in lung adenocarcinoma. "
            "Theranostics 2020;10(23):10838-10848",
            "10.7150/thno.50283",
        ),
        Paper(
            "mazzaschi2025",
            "radiomics",
            "Mazzaschi et al. Clin Cancer Res 2025 (longitudinal CT delta-radiomics of oligo- vs systemic acquired "
            "resistance to immunotherapy in NSCLC; the title is not quoted here)",
            "10.1158/1078-0432.CCR-24-1926",
        ),
        Paper(
            "yin2025",
            "amu",
            "Yin Y, Zhang T, Wang Z. An attention-based mRNA transformer network for accurate prediction of melanoma "
            "response to immune checkpoint inhibitors. Sci Rep 2025;15:31908",
            "10.1038/s41598-025-15830-y",
        ),
    )
}


@dataclass(frozen=True)
class PublishedFigure:
    paper: str
    key: str
    where: str  # "Abstract", "Table 2", ... or "not verified"
    page: str  # or "not verified"
    metric: str
    split: str  # the paper's split or cohort
    text: str  # the value as printed in the paper ("0.960", "<0.001", "83462")
    source: str  # where this row's number was taken from

    @property
    def value(self) -> float:
        return float(self.text.lstrip("<"))

    @property
    def upper_bound(self) -> bool:
        """The paper gives "<value" (a p-value below it), not the value itself."""
        return self.text.startswith("<")

    @property
    def verified(self) -> bool:
        return NOT_VERIFIED not in (self.where, self.page)

    @property
    def shown(self) -> str:
        """The value as a report prints it: as published, thousands separated."""
        if self.text.lstrip("<-").isdigit() and abs(self.value) >= 1000:
            return f"{int(self.value):,}"
        return self.text

    @property
    def reference(self) -> str:
        """Where the figure is in the paper, e.g. "park2020 Abstract p. 10838" or "... (not verified)"."""
        if not self.verified:
            return f"{self.paper}, {self.where if self.where != NOT_VERIFIED else 'place'} not verified"
        page = self.page if self.page.startswith("article") else f"p. {self.page}"
        return f"{self.paper}, {self.where}, {page}"


class UnknownFigure(KeyError):
    """A figure the table does not hold (a typo in the code, or a figure that was never published)."""


def _check(row: dict[str, str], number: int) -> PublishedFigure:
    missing = [c for c in COLUMNS if not (row.get(c) or "").strip()]
    if missing:
        raise ValueError(f"{TABLE.name} row {number}: empty {', '.join(missing)}")
    if row["paper"] not in PAPERS:
        raise ValueError(f"{TABLE.name} row {number}: unknown paper {row['paper']!r}")
    figure = PublishedFigure(*(row[c].strip() for c in COLUMNS))
    figure.value  # noqa: B018 - a value that is not a number is refused here
    return figure


@functools.cache
def load(path: Path = TABLE) -> tuple[PublishedFigure, ...]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        figures = tuple(_check(row, n) for n, row in enumerate(csv.DictReader(handle), start=2))
    keys = [(f.paper, f.key) for f in figures]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path.name}: a (paper, key) appears twice")
    return figures


def figure(paper: str, key: str) -> PublishedFigure:
    for found in load():
        if found.paper == paper and found.key == key:
            return found
    raise UnknownFigure(f"{paper}/{key} is not in {TABLE.name}")


def figures(paper: str) -> tuple[PublishedFigure, ...]:
    return tuple(f for f in load() if f.paper == paper)


def markdown() -> str:
    """The table as docs/methods/published-figures.md holds it."""
    lines = [
        "# The papers' reported figures",
        "",
        "Generated from `research/published_figures.csv` by `python -m research.published` (a test keeps this file",
        "equal to it). Every reproduction report and training report quotes the papers from that table, with the",
        'split and where in the paper; "not verified" marks a place or page that could not be checked against the',
        "paper, and `source` says where the number came from. The fusion method's paper is not identified in this",
        "repository: none of its figures are held (`immunode reproduce fusion --published NAME=VALUE`).",
        "",
    ]
    for paper in PAPERS.values():
        lines += [f"## {paper.key}: {paper.method}", "", f"{paper.citation}. doi:{paper.doi}", ""]
        lines += ["| key | where | page | metric | split | value | source |", "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {f.key} | {f.where} | {f.page} | {f.metric} | {f.split} | {f.text} | {f.source} |"
            for f in figures(paper.key)
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
