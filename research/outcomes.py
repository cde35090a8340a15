"""Research statistics of the PET immune-profiling method (`immunode analyse-outcomes`): the node's patient
CytAct summaries joined with an outcome table, as in the method:

- each patient's **pre-treatment** PET: the latest analysis whose study date lies within `window_days` before
  the therapy start (imported clinical data, or a `therapy_start` column of the outcome table); the method's
  window is 3 months (`METHOD_WINDOW_DAYS`, `pipelines.pet_quant.cytact.pretreatment_window_days`);
- results of **one model identity** per analysis (the most frequent, or the one asked for): CytAct of other
  weights is not comparable;
- the summary over the **RECIST target lesions** the node recorded (`patient_summary` lesions);
- ROC AUC for response (CR/PR) of the minimum, the mean and the maximum; Spearman against PFS/OS; Wilcoxon
  rank-sum; Kaplan-Meier, log-rank and Cox hazard ratios of the **high** CytAct group against the low group
  (the paper's direction: HR < 1 means the high group does better) at a cut-off that is stated (given, the
  configured one when it belongs to the weights, else the cohort's Youden-optimal value, optimistic);
- heterogeneity: the cohort's **median** variance splits high from low, as the paper does (or the site's
  cut-off, labelled as the site's: the paper gives none), with its own log-rank and Cox HR (high vs low);
- lesion CytAct against lesion size change (Spearman), from a table of lesion changes when one is given.

Outcome table (CSV): PatientID, optional IssuerOfPatientID, best_response (CR, PR, SD, PD; responders are
CR and PR), pfs_months, pfs_event (1 progression/death, 0 censored), os_months, os_event, optional
therapy_start (YYYY-MM-DD). Lesion changes (CSV): PatientID, optional IssuerOfPatientID, lesion (the lesion's
tracking UID in the SR, or its number), size_change_percent. Research use; a small cohort gives wide intervals.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import matplotlib

from pipelines.pet.settings import METHOD_PRETREATMENT_WINDOW_DAYS
from research import published
from research.errors import OutcomeTableError
from storage.types import PetCytActAnalysis

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import CoxPHFitter, KaplanMeierFitter  # noqa: E402
from lifelines.statistics import logrank_test  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

METHOD_WINDOW_DAYS = METHOD_PRETREATMENT_WINDOW_DAYS  # the method's pre-treatment window: 3 months
MEDIAN_SPLIT = "the cohort's median (the paper's split)"
RESPONDERS = {"CR", "PR"}
RESPONSES = {"CR", "PR", "SD", "PD"}
Key = tuple[str, str]


@dataclass(frozen=True)
class PatientRow:
    patient_id: str
    issuer: str
    best_response: str
    pfs_months: float
    pfs_event: int
    os_months: float
    os_event: int
    therapy_start: date | None = None


@dataclass(frozen=True)
class LesionChange:
    patient: Key
    lesion: str  # tracking UID or lesion number
    size_change_percent: float


@dataclass(frozen=True)
class Selection:
    """Which analysis of each patient is used, with which model, and who is left out (with why)."""

    chosen: Mapping[Key, PetCytActAnalysis]
    model: str
    rule: str
    left_out: tuple[str, ...]


def _date(text: str, where: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise OutcomeTableError(f"{where}: {text!r} is not a date (YYYY-MM-DD)") from None


def read_outcomes(path: Path) -> list[PatientRow]:
    rows = []
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        required = {"PatientID", "best_response", "pfs_months", "pfs_event", "os_months", "os_event"}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise OutcomeTableError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for number, record in enumerate(reader, start=2):
            response = record["best_response"].strip().upper()
            if response not in RESPONSES:
                raise OutcomeTableError(f"{path} row {number}, best_response: {response!r} is not CR/PR/SD/PD")
            try:
                values = {k: float(record[k]) for k in ("pfs_months", "os_months")}
                events = {k: int(record[k]) for k in ("pfs_event", "os_event")}
            except ValueError as error:
                raise OutcomeTableError(f"{path} row {number}: {error}") from None
            if any(e not in (0, 1) for e in events.values()):
                raise OutcomeTableError(f"{path} row {number}: events must be 0 or 1")
            rows.append(
                PatientRow(
                    record["PatientID"].strip(),
                    (record.get("IssuerOfPatientID") or "").strip(),
                    response,
                    values["pfs_months"],
                    events["pfs_event"],
                    values["os_months"],
                    events["os_event"],
                    _date(record.get("therapy_start") or "", f"{path} row {number}, therapy_start"),
                )
            )
    return rows


def read_lesion_changes(path: Path) -> list[LesionChange]:
    changes = []
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"PatientID", "lesion", "size_change_percent"} - set(reader.fieldnames or [])
        if missing:
            raise OutcomeTableError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for number, record in enumerate(reader, start=2):
            try:
                change = float(record["size_change_percent"])
            except ValueError:
                raise OutcomeTableError(f"{path} row {number}, size_change_percent: not a number") from None
            key = (record["PatientID"].strip(), (record.get("IssuerOfPatientID") or "").strip())
            changes.append(LesionChange(key, record["lesion"].strip(), change))
    return changes


def choose_analyses(
    analyses: Sequence[PetCytActAnalysis],
    therapy_starts: Mapping[Key, date],
    window_days: int | None,
    model: str | None = None,
) -> Selection:
    """Per patient the latest PET within `window_days` before the therapy start (None: the latest PET, whatever
    its date), of one model identity."""
    left_out: list[str] = []
    candidates: dict[Key, PetCytActAnalysis] = {}
    by_patient: dict[Key, list[PetCytActAnalysis]] = {}
    for analysis in analyses:
        by_patient.setdefault((analysis.patient_id, analysis.issuer_of_patient_id), []).append(analysis)
    for key, found in by_patient.items():
        if window_days is not None:
            start = therapy_starts.get(key)
            if start is None:
                left_out.append(f"{key[0]}: no therapy start (imported clinical data or the outcome table)")
                continue
            found = [
                a
                for a in found
                if a.study_date is not None and start - timedelta(days=window_days) <= a.study_date <= start
            ]
            if not found:
                left_out.append(f"{key[0]}: no PET analysed within {window_days} days before therapy start {start}")
                continue
        candidates[key] = max(found, key=lambda a: (a.study_date or date.min, a.job_id))
    counts = Counter(a.model for a in candidates.values())
    chosen_model = model or (min(counts, key=lambda m: (-counts[m], m)) if counts else "")
    chosen = {}
    for key, analysis in candidates.items():
        if analysis.model == chosen_model:
            chosen[key] = analysis
        else:
            left_out.append(f"{key[0]}: analysed with {analysis.model or 'no model'}, not {chosen_model}")
    method = " (the method's 3 months)" if window_days == METHOD_WINDOW_DAYS else " (not the method's 3 months)"
    rule = (
        f"latest PET within {window_days} days before the therapy start{method}"
        if window_days is not None
        else "latest PET analysed, whatever its date (--any-date: not the method's pre-treatment PET)"
    )
    return Selection(chosen, chosen_model, rule, tuple(left_out))


@dataclass
class OutcomeStatistics:
    patients: int
    cutoff: float = math.nan
    cutoff_source: str = ""
    variance_cutoff: float = math.nan
    variance_source: str = ""
    spearman: dict[str, tuple[float, float]] = field(default_factory=dict)  # name → (rho, p)
    rank_sum: dict[str, tuple[float, float]] = field(default_factory=dict)  # name → (statistic, p)
    auc: dict[str, float] = field(default_factory=dict)  # summary statistic → ROC AUC for response
    optimal_cutoff: float = math.nan  # Youden on the minimum
    logrank: dict[str, float] = field(default_factory=dict)  # "<grouping> <endpoint>" → p
    # "<grouping> <endpoint>" → (HR, lower, upper, p): high CytAct vs low; high heterogeneity vs low.
    cox: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    lesion_spearman: tuple[float, float, int] | None = None  # (rho, p, lesions) CytAct vs size change
    left_out: list[str] = field(default_factory=list)


def joined_table(rows: Sequence[PatientRow], selection: Selection) -> tuple[pd.DataFrame, list[str]]:
    records, unmatched = [], []
    for row in rows:
        analysis = selection.chosen.get((row.patient_id, row.issuer))
        scores = analysis.summary_cytact if analysis else ()
        if not scores:
            unmatched.append(row.patient_id)
            continue
        records.append(
            {
                "PatientID": row.patient_id,
                "IssuerOfPatientID": row.issuer,
                "study": analysis.study_instance_uid,
                "lesions": len(scores),
                "cytact_min": min(scores),
                "cytact_mean": float(np.mean(scores)),
                "cytact_max": max(scores),
                "cytact_var": float(np.var(scores, ddof=1)) if len(scores) > 1 else math.nan,
                "responder": int(row.best_response in RESPONDERS),
                "best_response": row.best_response,
                "pfs_months": row.pfs_months,
                "pfs_event": row.pfs_event,
                "os_months": row.os_months,
                "os_event": row.os_event,
            }
        )
    return pd.DataFrame.from_records(records), unmatched


def _survival(result: OutcomeStatistics, table: pd.DataFrame, high: pd.Series, name: str) -> None:
    """Log-rank and Cox HR of the `high` group against the rest, for PFS and OS."""
    if high.nunique() < 2:
        return
    for endpoint in ("pfs", "os"):
        times, events = table[f"{endpoint}_months"], table[f"{endpoint}_event"]
        test = logrank_test(times[high == 1], times[high == 0], events[high == 1], events[high == 0])
        result.logrank[f"{name} {endpoint}"] = float(test.p_value)
        frame = pd.DataFrame({"time": times, "event": events, "high": high.astype(int)})
        cox = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
        row = cox.summary.loc["high"]
        result.cox[f"{name} {endpoint}"] = (
            float(row["exp(coef)"]),
            float(row["exp(coef) lower 95%"]),
            float(row["exp(coef) upper 95%"]),
            float(row["p"]),
        )


def analyse(
    table: pd.DataFrame,
    cutoff: float | None = None,
    cutoff_source: str = "",
    variance_cutoff: float | None = None,
    lesion_pairs: Sequence[tuple[float, float]] = (),
) -> OutcomeStatistics:
    """The method's statistics. `cutoff` None: the cohort's Youden-optimal minimum; `variance_cutoff` None: the
    cohort's median variance; `lesion_pairs`: (lesion CytAct, size change %)."""
    result = OutcomeStatistics(patients=len(table))
    for name in ("cytact_min", "cytact_var"):
        values = table[name]
        usable = values.notna()
        for endpoint in ("pfs_months", "os_months"):
            rho = stats.spearmanr(values[usable], table.loc[usable, endpoint])
            result.spearman[f"{name} vs {endpoint}"] = (float(rho.statistic), float(rho.pvalue))
        responders = values[usable & (table.responder == 1)]
        others = values[usable & (table.responder == 0)]
        if len(responders) and len(others):
            test = stats.ranksums(responders, others)
            result.rank_sum[f"{name}: responders vs non-responders"] = (float(test.statistic), float(test.pvalue))
    if table.responder.nunique() == 2:
        for name in ("cytact_min", "cytact_mean", "cytact_max"):
            result.auc[name] = float(roc_auc_score(table.responder, table[name]))
        fpr, tpr, thresholds = roc_curve(table.responder, table.cytact_min)
        result.optimal_cutoff = float(thresholds[int(np.argmax(tpr - fpr))])  # Youden's J
    if cutoff is None:
        cutoff, cutoff_source = result.optimal_cutoff, "the cohort's Youden-optimal minimum (optimistic)"
    result.cutoff, result.cutoff_source = cutoff, cutoff_source
    if not math.isnan(cutoff):
        _survival(result, table, (table.cytact_min >= cutoff).astype(int), "high vs low CytAct")
    variances = table.cytact_var.dropna()
    if variance_cutoff is None:
        variance_cutoff, source = (float(variances.median()) if len(variances) else math.nan), MEDIAN_SPLIT
    else:
        source = "the site's cut-off (given; the paper gives none, it splits at the median)"
    result.variance_cutoff, result.variance_source = variance_cutoff, source
    if len(variances) >= 4 and not math.isnan(variance_cutoff):
        usable = table[table.cytact_var.notna()]
        _survival(result, usable, (usable.cytact_var > variance_cutoff).astype(int), "high vs low heterogeneity")
    if len(lesion_pairs) >= 3:
        cytact, change = np.asarray(lesion_pairs, dtype=float).T
        rho = stats.spearmanr(cytact, change)
        result.lesion_spearman = (float(rho.statistic), float(rho.pvalue), len(lesion_pairs))
    return result


def lesion_pairs(selection: Selection, changes: Sequence[LesionChange]) -> list[tuple[float, float]]:
    """(lesion CytAct, size change %) of the lesions a change table names, in the chosen analyses."""
    pairs = []
    for change in changes:
        analysis = selection.chosen.get(change.patient)
        if analysis is None:
            continue
        for lesion in analysis.lesions:
            if change.lesion in (lesion.tracking_uid, str(lesion.lesion_number)) and lesion.cytact is not None:
                pairs.append((lesion.cytact, change.size_change_percent))
    return pairs


def _paper(key: str) -> published.PublishedFigure:
    return published.figure("park2020", key)


def write_report(table: pd.DataFrame, result: OutcomeStatistics, selection: Selection, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "patients.csv", index=False)
    if not math.isnan(result.cutoff):
        high = table.cytact_min >= result.cutoff
        for endpoint in ("pfs", "os"):
            figure, axis = plt.subplots(figsize=(6, 4))
            for label, members in (("high CytAct", high), ("low CytAct", ~high)):
                if members.any():
                    KaplanMeierFitter(label=f"{label} (n={int(members.sum())})").fit(
                        table.loc[members, f"{endpoint}_months"], table.loc[members, f"{endpoint}_event"]
                    ).plot_survival_function(ax=axis)
            axis.set_xlabel("months")
            axis.set_ylabel(f"{endpoint.upper()} probability")
            axis.set_title(f"{endpoint.upper()} by minimum lesion CytAct (cut-off {result.cutoff:.3f})")
            figure.tight_layout()
            figure.savefig(out / f"km_{endpoint}.png", dpi=120)
            plt.close(figure)
    if result.auc:
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        for name, auc in result.auc.items():
            fpr, tpr, _ = roc_curve(table.responder, table[name])
            axis.plot(fpr, tpr, label=f"{name.removeprefix('cytact_')} (AUC {auc:.2f})")
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
        axis.set_xlabel("1 - specificity")
        axis.set_ylabel("sensitivity")
        axis.set_title("Patient CytAct for response (CR/PR)")
        axis.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(out / "roc_response.png", dpi=120)
        plt.close(figure)
    lines = [
        "# CytAct and outcome: research statistics",
        "",
        "RESEARCH USE ONLY. Patient CytAct (minimum, mean, maximum, variance) over the RECIST target lesions the",
        f"node recorded; PET: {selection.rule}; model: {selection.model}.",
        f"Patients joined: {result.patients}. Left out: {'; '.join(result.left_out) or 'none'}.",
        f"Low/high CytAct cut-off: {result.cutoff:.3f} ({result.cutoff_source}). Heterogeneity: variance above "
        f"{result.variance_cutoff:.4g} ({result.variance_source}).",
        "Hazard ratios are of the HIGH group against the low group (the paper's direction; the paper reports "
        + ", ".join(f"{f.metric} {f.shown} ({f.reference})" for f in map(_paper, ("hr_pfs", "hr_os")))
        + ").",
        "",
        "| test | statistic | p |",
        "|---|---|---|",
    ]
    lines += [f"| Spearman {name} | rho {rho:.3f} | {p:.3g} |" for name, (rho, p) in result.spearman.items()]
    lines += [f"| Wilcoxon rank-sum {name} | {z:.3f} | {p:.3g} |" for name, (z, p) in result.rank_sum.items()]
    lines += [
        f"| ROC AUC, {name.removeprefix('cytact_')} CytAct for response | {a:.3f} | |" for name, a in result.auc.items()
    ]
    lines += [f"| optimal cut-off of the minimum (Youden) | {result.optimal_cutoff:.3f} | |"]
    lines += [f"| log-rank {name} | | {p:.3g} |" for name, p in result.logrank.items()]
    lines += [
        f"| Cox HR {name} | {hr:.2f} (95 % CI {lo:.2f}-{hi:.2f}) | {p:.3g} |"
        for name, (hr, lo, hi, p) in result.cox.items()
    ]
    if result.lesion_spearman is not None:
        rho, p, n = result.lesion_spearman
        lines.append(f"| Spearman lesion CytAct vs lesion size change ({n} lesions) | rho {rho:.3f} | {p:.3g} |")
    lines += ["", "Plots: km_pfs.png, km_os.png, roc_response.png. Table: patients.csv.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
