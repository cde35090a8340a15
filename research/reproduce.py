"""Reproduction reports (`immunode reproduce cytact|radiomics|amu|fusion --cohort ...`): a method on a user's
cohort, each of its figures beside the paper's on the same metric, with the split each was computed on and how the
setting differs. The papers' figures come from the published-figures table (`research.published`), with where
in the paper each is; the fusion method's paper is not identified in this repository, so its figures are given
by the user (`--published NAME=VALUE`) or the report says they are not given.

The `run_*` functions are the commands' work (the command line reads the store and hands them what they need);
`notes(method, quick)` are the report's notes on the settings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from research import published
from research.errors import ResearchError
from research.published import PublishedFigure

PAPER_OF = {paper.method: paper for paper in published.PAPERS.values()}
METHODS = {
    "cytact": "FDG-PET immune profiling: lesion CytAct from PET, patient minimum and variance, outcome",
    "radiomics": "Longitudinal CT delta-radiomics of oligo vs systemic acquired resistance",
    "amu": "Expression transformer over tumour mRNA for ICI response",
    "fusion": "Attention late fusion of histology, genomic and clinical embeddings for ICI response",
}


@dataclass(frozen=True)
class Figure:
    """One row of a comparison: the paper's figure (from the table, or given by the user) and the node's on the
    same metric, each with its split, and how the node's setting differs from the paper's."""

    metric: str
    published: PublishedFigure | None  # None: not in the table (see `given`)
    ours: float | None  # None: not computed on this cohort (the note says why)
    split: str  # the node's split or cohort
    setting: str = ""  # how the node's setting differs from the paper's
    note: str = ""
    given: float | None = None  # the paper's value as the user gave it (`--published`), when not in the table


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def _paper_cells(figure: Figure) -> tuple[str, str, str]:
    """(value, split, source) of the paper's side."""
    if figure.published is not None:
        return figure.published.shown, figure.published.split, figure.published.reference
    if figure.given is not None:
        return _number(figure.given), "as given", "given on the command line (--published)"
    return "n/a", "", "not given"


def _cell(text: object) -> str:
    """A table cell's text: a `|` inside (e.g. Spearman |rho|) escaped so that it stays one cell."""
    return str(text).replace("|", "\\|")


def write_comparison(method: str, figures: Sequence[Figure], notes: Sequence[str], out: Path) -> Path:
    if method not in METHODS:
        raise ResearchError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    paper = PAPER_OF.get(method)
    cited = f"{paper.citation}, doi:{paper.doi} ({paper.key})" if paper else "the paper is not identified here"
    lines = [
        f"# Reproduction: {method}",
        "",
        f"Method: {METHODS[method]}; paper: {cited}. RESEARCH USE ONLY: figures on this cohort beside the paper's, "
        "each on the same metric, with the split it was computed on and how the setting differs. The paper's "
        "figures: research/published_figures.csv (docs/methods/published-figures.md).",
        "",
        "| metric | paper | paper's split | this node | this node's split | how the setting differs | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        value, split, source = _paper_cells(f)
        ours = _number(f.ours) + (f" ({f.note})" if f.note else "")
        cells = (f.metric, value, split, ours, f.split, f.setting, source)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += ["", *notes, ""]
    report = out / "comparison.md"
    report.write_text("\n".join(lines))
    return report


# --- cytact --------------------------------------------------------------------------------------------------

PARK = "park2020"


def cytact_figures(
    cox: Mapping[str, tuple[float, float, float, float]],
    auc: Mapping[str, float],
    statistics: object | None = None,
    cohort: str = "this cohort",
    cutoff_source: str = "",
) -> list[Figure]:
    """The paper's hazard ratios, AUCs and correlations beside this cohort's (`statistics`: the
    `research.outcomes.OutcomeStatistics` they came from, for the rank-sum test and the lesion correlation)."""
    group = f"high vs low at the cut-off: {cutoff_source}" if cutoff_source else "high vs low minimum CytAct"
    figures = []
    for endpoint in ("pfs", "os"):
        ours = cox.get(f"high vs low CytAct {endpoint}")
        ci = f"95 % CI {ours[1]:.2f}-{ours[2]:.2f}" if ours else "not estimable on this cohort"
        figures += [
            Figure(f"Cox HR {endpoint.upper()}", published.figure(PARK, f"hr_{endpoint}"), ours[0] if ours else None,
                   cohort, group, ci),
            Figure(f"p, Cox HR {endpoint.upper()}", published.figure(PARK, f"p_hr_{endpoint}"),
                   ours[3] if ours else None, cohort, "Wald p of the Cox model here"),
        ]  # fmt: skip
    for statistic in ("min", "mean", "max"):
        figures.append(
            Figure(
                f"ROC AUC for response (CR/PR), {statistic} CytAct",
                published.figure(PARK, f"auc_{statistic}"),
                auc.get(f"cytact_{statistic}"),
                cohort,
                "the summary over the node's RECIST target lesions",
                "" if f"cytact_{statistic}" in auc else "needs responders and non-responders",
            )
        )
    rank_sum = getattr(statistics, "rank_sum", {}).get("cytact_var: responders vs non-responders")
    figures.append(
        Figure(
            "p, variance of lesion CytAct, responders vs non-responders",
            published.figure(PARK, "p_variance_response"),
            rank_sum[1] if rank_sum else None,
            f"{cohort}, patients with two or more target lesions",
            "Wilcoxon rank-sum here",
            "" if rank_sum else "needs responders and non-responders with two or more lesions",
        )
    )
    lesions = getattr(statistics, "lesion_spearman", None)
    figures.append(
        Figure(
            "Spearman rho, lesion CytAct vs lesion size change",
            published.figure(PARK, "rho_lesion_size"),
            lesions[0] if lesions else None,
            f"{cohort}, {lesions[2]} lesions" if lesions else cohort,
            "",
            f"p {lesions[1]:.3g}" if lesions else "needs lesion size changes (analyse-outcomes --lesion-changes)",
        )
    )
    for cohort_name in ("snuh", "tcga"):
        figures.append(
            Figure(
                "Spearman rho, predicted vs RNA-seq CytAct",
                published.figure(PARK, f"rho_{cohort_name}"),
                None,
                "external validation",
                "",
                "a validation cohort with tumour RNA-seq: immunode evaluate cytact",
            )
        )
    return figures


def run_cytact(
    rows: Sequence[object],
    analyses: Sequence[object],
    therapy_starts: Mapping[tuple[str, str], date],
    window_days: int,
    out: Path,
    model: str | None = None,
) -> list[Figure]:
    """Each patient's pre-treatment PET (within `window_days` before the therapy start: the method's window by
    default, `research.outcomes.METHOD_WINDOW_DAYS`) and one model identity, the outcome statistics (report.md
    as `analyse-outcomes`), and the figures beside the paper's."""
    from research import outcomes

    selection = outcomes.choose_analyses(analyses, therapy_starts, window_days, model)  # type: ignore[arg-type]
    table, unmatched = outcomes.joined_table(rows, selection)  # type: ignore[arg-type]
    if len(table) < 3:
        reasons = "; ".join(selection.left_out) or "none in the node"
        raise ResearchError(f"only {len(table)} patient(s) usable: {reasons}")
    result = outcomes.analyse(table)
    result.left_out = list(selection.left_out) + [f"{p}: no CytAct result chosen" for p in unmatched]
    outcomes.write_report(table, result, selection, out)
    cohort = f"this cohort ({len(table)} patients; PET: {selection.rule})"
    return cytact_figures(result.cox, result.auc, result, cohort, result.cutoff_source)


# --- radiomics -----------------------------------------------------------------------------------------------

MAZZASCHI = "mazzaschi2025"


def published_signature(path: Path) -> dict[str, dict[str, float | None]]:
    """Feature → AUC and its CI, as a CSV of the paper's Table 2 gives them (e.g. delta_radiomics_published.csv)."""

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


def radiomics_figures(
    tests: Sequence[object],
    given: Mapping[str, Mapping[str, float | None]] | None = None,
    setting: str = "",
) -> list[Figure]:
    """Each published feature's AUC (the table's; `given`, a CSV of Table 2, only chooses the features and is
    checked against the table) beside ours (systemic positive; the paper's AUC is orientation-free, so ours is
    max(AUC, 1 - AUC), with the direction noted)."""
    ours = {t.feature: t for t in tests}  # type: ignore[attr-defined]
    rows = [f for f in published.figures(MAZZASCHI) if f.key.startswith("auc:")]
    names = list(given) if given else [f.key.removeprefix("auc:") for f in rows]
    n_oligo = max((t.n_oligo for t in tests), default=0)  # type: ignore[attr-defined]
    n_systemic = max((t.n_systemic for t in tests), default=0)  # type: ignore[attr-defined]
    split = f"this cohort: {n_oligo} oligo vs {n_systemic} systemic" if tests else "this cohort"
    figures = [
        Figure("patients, oligo-progression", published.figure(MAZZASCHI, "n_oligo"), n_oligo or None, split),
        Figure("patients, systemic progression", published.figure(MAZZASCHI, "n_systemic"), n_systemic or None, split),
    ]
    for name in names:
        try:
            paper = published.figure(MAZZASCHI, f"auc:{name}")
        except published.UnknownFigure:
            paper = None
        listed = (given or {}).get(name, {}).get("auc")
        differs = ""
        if paper is not None and listed is not None and listed != paper.value:
            differs = f"; the given table says {listed}"
        test = ours.get(name)
        if test is None:
            figures.append(
                Figure(f"ROC AUC, delta {name}", paper, None, split, setting,
                       "not in this cohort, or filtered as redundant" + differs,
                       given=listed if paper is None else None)
            )  # fmt: skip
            continue
        oriented = max(test.auc, 1 - test.auc)
        direction = "higher in systemic" if test.auc >= 0.5 else "higher in oligo"
        note = f"{direction}; MW p {test.mann_whitney_p:.3g}, permutation p {test.permutation_p:.3g}"
        note += (" *" if test.significant else "") + differs
        figures.append(
            Figure(f"ROC AUC, delta {name}", paper, oriented, split, setting, note,
                   given=listed if paper is None else None)
        )  # fmt: skip
    return figures


def run_radiomics(table_path: Path, out: Path, quick: bool, published_table: Path | None = None) -> list[Figure]:
    """The method's statistics on a Δ table (as `analyse-radiomics --table`) beside the paper's Table 2."""
    from research import radiomics

    table = radiomics.read_table(Path(table_path))
    _, tests = radiomics.analyse(table, out, 200 if quick else 1000)
    given = published_signature(published_table) if published_table is not None else None
    return radiomics_figures(tests, given, radiomics.filter_statement(table))


# --- amu -----------------------------------------------------------------------------------------------------

YIN = "yin2025"
QUICK_SHAP_SAMPLES = 12  # --quick: the gene importance explains this seeded subset of the samples (all otherwise)
QUICK_CNN_EPOCHS = 20  # --quick: the 1-D CNN baseline's epochs


def amu_figures(
    means: Mapping[str, float],
    parameters: int,
    test: Mapping[str, float] | None = None,
    splits: str = "held-out 20 % of this cohort, mean over random stratified splits",
    test_cohort: str = "",
) -> list[Figure]:
    """Like for like: the means over held-out splits of one cohort beside the paper's validation split; a separate
    test cohort's figures (`test`) beside the paper's test set; the model size."""
    within = "random 80/20 splits of one cohort; responders duplicated inside each training split only"
    missing = "no separate test cohort given (the paper's test set: post-treatment samples)"
    figures = [
        Figure("ROC AUC", published.figure(YIN, "val_auc"), means.get("roc_auc"), splits, within),
        Figure("mAP (both classes)", published.figure(YIN, "val_map"), means.get("map"), splits, within),
        Figure("F1, macro", published.figure(YIN, "val_f1"), means.get("f1_macro"), splits, within),
        Figure("accuracy", published.figure(YIN, "val_f1"), means.get("accuracy"), splits, within),
    ]
    for metric, key, name in (("ROC AUC", "test_auc", "roc_auc"), ("mAP (both classes)", "test_map", "map")):
        value = test.get(name) if test else None
        figures.append(
            Figure(metric, published.figure(YIN, key), value, test_cohort or "separate test cohort",
                   "weights trained on the whole --cohort, applied to --test-cohort", "" if test else missing)
        )  # fmt: skip
    figures.append(
        Figure("parameters", published.figure(YIN, "parameters"), parameters, "this model, this panel",
               f"the paper's for its {published.figure(YIN, 'panel_genes').shown}-gene panel")
    )  # fmt: skip
    return figures


def run_amu(
    cohort: Path, out: Path, panel: Path | None, quick: bool, test_cohort: Path | None = None
) -> list[Figure]:
    """Training on the cohort (random splits, baselines; report.md), then, when given, the final weights on a
    separate test cohort (the paper's test setting)."""
    from models.expression_baselines import CNN_EPOCHS
    from models.expression_transformer import TransformerSettings
    from research.expression import evaluate_expression, train_expression

    settings = TransformerSettings(epochs=5, layers=1) if quick else TransformerSettings()
    splits = 2 if quick else 5
    result = train_expression(
        Path(cohort),
        out,
        panel,
        settings,
        splits,
        grid="quick" if quick else "published",
        shap_samples=QUICK_SHAP_SAMPLES if quick else 0,
        cnn_epochs=QUICK_CNN_EPOCHS if quick else CNN_EPOCHS,
    )
    test = evaluate_expression(Path(test_cohort), result.weights, out / "test") if test_cohort else None
    return amu_figures(
        result.means["transformer"],
        result.card.metrics["parameters"],
        test,
        f"held-out 20 % of {Path(cohort).name}, mean of {splits} random stratified splits",
        Path(test_cohort).name if test_cohort else "",
    )


# --- fusion --------------------------------------------------------------------------------------------------


def fusion_figures(metrics: Mapping[str, Mapping[str, float]], given: Mapping[str, float]) -> list[Figure]:
    """The test set's ROC AUC of each model beside the value the user gave for it (`<model>_auc`)."""
    setting = "no mutation vector / TMB input, head on frozen embeddings, dNLR added (the notes say more)"
    return [
        Figure(f"{model} ROC AUC", None, metrics[model].get("roc_auc"), "test 20 % of this cohort", setting,
               given=given.get(f"{model}_auc"))
        for model in ("attention", "concat", "clinical-only", "histology-only", "imaging-only", "genomic-only")
        if model in metrics
    ]  # fmt: skip


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


# --- notes ---------------------------------------------------------------------------------------------------


def notes(method: str, quick: bool = False, window_days: int | None = None) -> list[str]:
    """What the report says about how the figures were obtained."""
    from models import FUSION_PUBLISHED_DIFFERENCES
    from research.outcomes import METHOD_WINDOW_DAYS

    window = window_days or METHOD_WINDOW_DAYS
    text = {
        "cytact": [
            f"Each patient's pre-treatment PET (the latest analysis within {window} days before the therapy start; the",
            f"method's window is 3 months, {METHOD_WINDOW_DAYS} days) and one CytAct model; the patient summary over",
            "the RECIST target lesions; HR of the high group against the low group, in the paper's direction.",
            "With weights other than the paper's (the shipped ones are SYNTHETIC), the figures say nothing about it.",
        ],
        "radiomics": [
            "Labels: acquired resistance (progression after response or 6 months of stable disease), oligo vs",
            "systemic counted at that progression, lesions progressive by growth since their nadir; Δ = (T1 - T0)/T0;",
            "a feature counts when Mann-Whitney and the permutation test are both significant (*).",
        ],
        "amu": [
            "Like for like: the means over held-out splits of one cohort beside the paper's validation split, a",
            "separate test cohort (--test-cohort) beside its test set. precision/recall/F1: macro (as the paper's",
            "comparison table) and class-weighted, both in report.md. The paper's gene panel is in its supplement,",
            "not here: --panel takes it; otherwise the substitute panel.",
        ],
        "fusion": [
            "Differences from the published method: " + "; ".join(FUSION_PUBLISHED_DIFFERENCES) + ". Histology arm as",
            "published (whole-slide MIL) but with a site-trained patch encoder, not ImageNet; the PET CytAct embedding",
            "is an added fourth modality. Leakage guard by patient: the expression model is retrained on the fusion's",
            "training split when it was trained on test patients. The paper's figures: --published NAME=VALUE.",
        ],
    }[method]
    quick_note = "QUICK settings (--quick): fewer splits, epochs, grid points and gene-importance samples."
    return text + ([quick_note] if quick else [])
