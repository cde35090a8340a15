"""Research statistics of the PET immune-profiling method: the node's lesion CytAct joined with a patient
outcome table. Spearman correlations, Wilcoxon rank-sum tests, ROC AUC of the minimum CytAct for response
with the Youden-optimal cut-off, Kaplan-Meier curves with log-rank tests and Cox hazard ratios (95 % CI)
for the low/high groups. For research use; a small cohort gives wide intervals.

Outcome table (CSV): PatientID, optional IssuerOfPatientID, best_response (CR, PR, SD, PD; responders are
CR and PR), pfs_months, pfs_event (1 progression/death, 0 censored), os_months, os_event.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from research.errors import OutcomeTableError

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import CoxPHFitter, KaplanMeierFitter  # noqa: E402
from lifelines.statistics import logrank_test  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

RESPONDERS = {"CR", "PR"}
RESPONSES = {"CR", "PR", "SD", "PD"}


@dataclass(frozen=True)
class PatientRow:
    patient_id: str
    issuer: str
    best_response: str
    pfs_months: float
    pfs_event: int
    os_months: float
    os_event: int


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
                )
            )
    return rows


@dataclass
class OutcomeStatistics:
    patients: int
    spearman: dict[str, tuple[float, float]] = field(default_factory=dict)  # name → (rho, p)
    rank_sum: dict[str, tuple[float, float]] = field(default_factory=dict)  # name → (statistic, p)
    auc: float = math.nan
    optimal_cutoff: float = math.nan
    logrank: dict[str, float] = field(default_factory=dict)  # endpoint → p
    cox: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # endpoint → (HR, lo, hi, p)
    unmatched: list[str] = field(default_factory=list)


def joined_table(rows: list[PatientRow], cytact: dict[tuple[str, str], list[float]]) -> tuple[pd.DataFrame, list[str]]:
    records, unmatched = [], []
    for row in rows:
        scores = cytact.get((row.patient_id, row.issuer))
        if not scores:
            unmatched.append(row.patient_id)
            continue
        records.append(
            {
                "PatientID": row.patient_id,
                "lesions": len(scores),
                "cytact_min": min(scores),
                "cytact_mean": float(np.mean(scores)),
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


def analyse(table: pd.DataFrame, low_group_cutoff: float) -> OutcomeStatistics:
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
        result.auc = float(roc_auc_score(table.responder, table.cytact_min))
        fpr, tpr, thresholds = roc_curve(table.responder, table.cytact_min)
        result.optimal_cutoff = float(thresholds[int(np.argmax(tpr - fpr))])  # Youden's J
    low = (table.cytact_min < low_group_cutoff).astype(int)
    for endpoint in ("pfs", "os"):
        if low.nunique() < 2:
            continue
        times, events = table[f"{endpoint}_months"], table[f"{endpoint}_event"]
        test = logrank_test(times[low == 1], times[low == 0], events[low == 1], events[low == 0])
        result.logrank[endpoint] = float(test.p_value)
        frame = pd.DataFrame({"time": times, "event": events, "low_cytact": low})
        cox = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
        summary = cox.summary.loc["low_cytact"]
        result.cox[endpoint] = (
            float(summary["exp(coef)"]),
            float(summary["exp(coef) lower 95%"]),
            float(summary["exp(coef) upper 95%"]),
            float(summary["p"]),
        )
    return result


def write_report(table: pd.DataFrame, result: OutcomeStatistics, low_group_cutoff: float, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "patients.csv", index=False)
    low = table.cytact_min < low_group_cutoff
    for endpoint in ("pfs", "os"):
        figure, axis = plt.subplots(figsize=(6, 4))
        for label, members in (("low CytAct", low), ("high CytAct", ~low)):
            if members.any():
                KaplanMeierFitter(label=f"{label} (n={int(members.sum())})").fit(
                    table.loc[members, f"{endpoint}_months"], table.loc[members, f"{endpoint}_event"]
                ).plot_survival_function(ax=axis)
        axis.set_xlabel("months")
        axis.set_ylabel(f"{endpoint.upper()} probability")
        axis.set_title(f"{endpoint.upper()} by minimum lesion CytAct (cut-off {low_group_cutoff})")
        figure.tight_layout()
        figure.savefig(out / f"km_{endpoint}.png", dpi=120)
        plt.close(figure)
    if not math.isnan(result.auc):
        fpr, tpr, _ = roc_curve(table.responder, table.cytact_min)
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        axis.plot(fpr, tpr, label=f"AUC {result.auc:.2f}")
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
        axis.set_xlabel("1 - specificity")
        axis.set_ylabel("sensitivity")
        axis.set_title("Minimum CytAct for response (CR/PR)")
        axis.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(out / "roc_response.png", dpi=120)
        plt.close(figure)
    lines = [
        "# CytAct and outcome: research statistics",
        "",
        "RESEARCH USE ONLY. Lesion CytAct from the node's most recent analysis of each patient.",
        f"Patients joined: {result.patients}; not found in the node: {', '.join(result.unmatched) or 'none'}.",
        "",
        "| test | statistic | p |",
        "|---|---|---|",
    ]
    lines += [f"| Spearman {name} | rho {rho:.3f} | {p:.3g} |" for name, (rho, p) in result.spearman.items()]
    lines += [f"| Wilcoxon rank-sum {name} | {z:.3f} | {p:.3g} |" for name, (z, p) in result.rank_sum.items()]
    lines += [
        f"| ROC AUC, minimum CytAct for response | {result.auc:.3f} | |",
        f"| optimal cut-off (Youden) | {result.optimal_cutoff:.3f} | |",
    ]
    lines += [f"| log-rank {e.upper()} low vs high | | {p:.3g} |" for e, p in result.logrank.items()]
    lines += [
        f"| Cox HR {e.upper()} low vs high | {hr:.2f} (95 % CI {lo:.2f}-{hi:.2f}) | {p:.3g} |"
        for e, (hr, lo, hi, p) in result.cox.items()
    ]
    lines += ["", "Plots: km_pfs.png, km_os.png, roc_response.png. Table: patients.csv.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
