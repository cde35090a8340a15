"""`immunode reproduce`: each method on a synthetic cohort shaped like the public ones, its figures beside the
paper's (from research/published_figures.csv) on the same metric, with both splits and how the setting differs."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from immunode.cli import main as cli_main
from models.expression_transformer import load_panel
from research import published
from research.reproduce import (
    Figure,
    amu_figures,
    notes,
    published_signature,
    radiomics_figures,
    run_cytact,
    run_radiomics,
    write_comparison,
)
from tests.conftest import SHARED_DATA
from tests.research.test_outcomes import test_cli_joins_results_stored_by_the_node as _store_with_cytact
from tests.synthetic_cohorts import synthetic_cohort, write_training_table

PUBLISHED = SHARED_DATA / "delta_radiomics_published.csv"


def _config(tmp_path: Path, make_settings) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(make_settings().model_dump(mode="json")))
    return config


def _row(text: str, metric: str) -> list[str]:
    """The cells of the first report row of `metric`."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {metric} |"))
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # `\|` is inside a cell


def _delta_table(path: Path, with_time_points: bool = False, features: int = 15) -> Path:
    """19 patients, 12 oligo and 7 systemic, the published Δ features (the first three with a planted difference)."""
    names = list(published_signature(PUBLISHED))[:features]
    rng = np.random.default_rng(3)
    systemic = np.array([False] * 12 + [True] * 7)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        raw = [f"{t}_{n}" for t in ("T0", "T1") for n in names] if with_time_points else []
        writer.writerow(["PatientID", "pattern", *names, *raw])
        for i, label in enumerate(systemic):
            values = rng.normal(0, 0.3, len(names)) + (label * 1.5) * (np.arange(len(names)) < 3)
            t0 = rng.uniform(1, 2, len(names))
            extra = [*np.round(t0, 4), *np.round(t0 * (1 + values), 4)] if with_time_points else []
            writer.writerow([f"P{i}", "systemic" if label else "oligo", *np.round(values, 4), *extra])
    return path


def test_radiomics_on_a_cohort_shaped_like_the_papers(tmp_path: Path, make_settings) -> None:
    table = _delta_table(tmp_path / "deltas.csv")
    out = tmp_path / "reproduction"
    arguments = ["--config", str(_config(tmp_path, make_settings)), "reproduce", "radiomics", "--cohort", str(table)]
    assert cli_main([*arguments, "--published-table", str(PUBLISHED), "--out", str(out), "--quick"]) == 0
    text = (out / "comparison.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ROC AUC, delta ")]
    assert len(rows) == 15
    first = _row(text, "ROC AUC, delta P_wavelet-LLL_glrlm_GrayLevelNonUniformityNormalized")
    # The paper's AUC from the table, its split, ours on 12 vs 7, where in the paper.
    assert first[1] == "0.99" and first[2] == "oligo vs systemic acquired resistance"
    assert first[4] == "this cohort: 12 oligo vs 7 systemic" and first[6] == "mazzaschi2025, Table 2 not verified"
    assert _row(text, "patients, oligo-progression")[1:4] == ["12", "oligo-progression (acquired resistance)", "12.000"]
    assert "QUICK settings" in text and (out / "feature_tests.csv").exists()


def test_radiomics_states_which_datasets_the_filter_ran_on(tmp_path: Path) -> None:
    delta_only = run_radiomics(_delta_table(tmp_path / "d.csv", features=3), tmp_path / "a", quick=True)
    assert "NOT the paper's datasets" in delta_only[-1].setting
    table = _delta_table(tmp_path / "t.csv", with_time_points=True, features=3)
    paper = run_radiomics(table, tmp_path / "b", quick=True)
    assert "the paper's eight datasets" in paper[-1].setting
    # A given Table 2 that differs from the repository's table is pointed out, never silently used.
    name = next(iter(published_signature(PUBLISHED)))
    figures = radiomics_figures([], {name: {"auc": 0.97}})
    assert figures[-1].published.text == "0.99" and "the given table says 0.97" in figures[-1].note


def test_the_published_table_agrees_with_the_shared_copy_of_table_2() -> None:
    signature = published_signature(PUBLISHED)
    for name, values in signature.items():
        assert published.figure("mazzaschi2025", f"auc:{name}").value == pytest.approx(values["auc"])


def test_amu_on_a_cohort_shaped_like_a_public_melanoma_set(
    tmp_path: Path, make_settings, torch_threads_restored
) -> None:
    """A GEO-like anti-PD-1 melanoma cohort: 60 samples, a third responders, genes by symbol."""
    cohort = synthetic_cohort(load_panel().genes, patients=60, seed=5)
    table = write_training_table(cohort, tmp_path / "geo.csv")
    out = tmp_path / "reproduction"
    arguments = ["--config", str(_config(tmp_path, make_settings)), "reproduce", "amu", "--cohort", str(table)]
    assert cli_main([*arguments, "--out", str(out), "--quick"]) == 0
    text = (out / "comparison.md").read_text()
    auc = _row(text, "ROC AUC")
    # Like for like: the means over held-out splits beside the paper's validation AUC, not its test AUC.
    assert auc[1:3] == ["0.941", "validation (pre-treatment samples)"] and auc[6] == "yin2025, Abstract, article 31908"
    assert _row(text, "mAP (both classes)")[1] == "0.960" and _row(text, "F1, macro")[1] == "0.930"
    test_rows = [line for line in text.splitlines() if "test (post-treatment samples)" in line]
    assert len(test_rows) == 2 and "| 0.672 |" in test_rows[0] and "| 0.800 |" in test_rows[1]
    assert "no separate test cohort given" in test_rows[0]
    assert _row(text, "parameters")[1] == "83,462" and (out / "report.md").exists()
    report = (out / "report.md").read_text()
    assert "f1_macro" in report and "f1_weighted" in report and "0.960 AUC" not in report


def test_amu_figures_set_a_test_cohort_beside_the_papers_test_set() -> None:
    means = {"roc_auc": 0.81, "map": 0.8, "f1_macro": 0.7, "accuracy": 0.72}
    figures = amu_figures(means, 1000, {"roc_auc": 0.66, "map": 0.7}, test_cohort="post.csv")
    test_auc = next(f for f in figures if f.published.key == "test_auc")
    assert (test_auc.ours, test_auc.split, test_auc.published.text) == (0.66, "post.csv", "0.672")
    validation = next(f for f in figures if f.published.key == "val_auc")
    assert validation.ours == 0.81 and validation.published.split == "validation (pre-treatment samples)"


def test_cytact_against_the_papers_figures(tmp_path: Path, make_settings) -> None:
    _store_with_cytact(tmp_path, make_settings)  # six patients with stored CytAct and an outcome table
    config, outcomes = tmp_path / "config.yaml", tmp_path / "outcomes.csv"
    out = tmp_path / "reproduction"
    assert cli_main(["--config", str(config), "reproduce", "cytact", "--cohort", str(outcomes), "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    assert _row(text, "Cox HR PFS")[1:3] == ["0.25", "ICB cohort"]
    assert _row(text, "Cox HR OS")[1] == "0.18" and _row(text, "p, Cox HR PFS")[1] == "0.001"
    # The paper's AUCs, no longer "n/a"; ours on the same statistic.
    minimum = _row(text, "ROC AUC for response (CR/PR), min CytAct")
    assert minimum[1] == "0.88" and minimum[3] == "0.556" and minimum[6] == "park2020, place not verified"
    assert _row(text, "ROC AUC for response (CR/PR), max CytAct")[1] == "0.74"
    assert _row(text, "Spearman rho, lesion CytAct vs lesion size change")[1] == "-0.54"
    assert _row(text, "p, variance of lesion CytAct, responders vs non-responders")[1] == "0.005"
    assert "Spearman rho, predicted vs RNA-seq CytAct | 0.32 |" in text


def test_cytact_takes_the_methods_three_month_window(tmp_path: Path, make_settings) -> None:
    """The stored PETs are 9 days before the therapy start; one patient's start moved 80 days later is in the
    method's 3-month window (91 days) but out of a 60-day one."""
    from research.outcomes import METHOD_WINDOW_DAYS, read_outcomes
    from storage import results
    from storage.database import Database

    _store_with_cytact(tmp_path, make_settings)
    rows = read_outcomes(tmp_path / "outcomes.csv")
    later = tmp_path / "later.csv"
    text = (tmp_path / "outcomes.csv").read_text()
    later.write_text(text.replace("P1,CR,20,0,30,0,2026-03-01", "P1,CR,20,0,30,0,2026-05-11"))
    database = Database(make_settings().database_url)
    with database.session() as session:
        analyses = results.pet_cytact_analyses(session)
    database.dispose()
    rows = read_outcomes(later)
    starts = {(r.patient_id, r.issuer): r.therapy_start for r in rows}
    run_cytact(rows, analyses, starts, METHOD_WINDOW_DAYS, tmp_path / "method")
    report = (tmp_path / "method" / "report.md").read_text()
    assert "Patients joined: 6" in report and "91 days before the therapy start (the method's 3 months)" in report
    run_cytact(rows, analyses, starts, 60, tmp_path / "narrow")
    report = (tmp_path / "narrow" / "report.md").read_text()
    assert "Patients joined: 5" in report and "P1: no PET analysed within 60 days" in report
    assert notes("cytact", window_days=60)[0].endswith("within 60 days before the therapy start; the")


def test_every_figure_row_names_both_splits_and_the_source(tmp_path: Path) -> None:
    paper = published.figure("park2020", "hr_pfs")
    report = write_comparison("cytact", [Figure("Cox HR PFS", paper, 0.5, "this cohort", "median split")], [], tmp_path)
    assert "| Cox HR PFS | 0.25 | ICB cohort | 0.500 | this cohort | median split | park2020, Abstract, p. 10838 |" in (
        report.read_text()
    )
    assert "doi:10.7150/thno.50283" in report.read_text()


def test_unknown_published_value_is_a_clear_error(tmp_path: Path, make_settings, capsys) -> None:
    from research.reproduce import parse_published

    assert parse_published(["attention_auc=0.81"]) == {"attention_auc": pytest.approx(0.81)}
    cohort = tmp_path / "fusion.csv"
    cohort.write_text("PatientID,response\nP1,CR\n")
    arguments = ["--config", str(_config(tmp_path, make_settings)), "reproduce", "fusion", "--cohort", str(cohort)]
    assert cli_main([*arguments, "--published", "attention_auc=high", "--out", str(tmp_path / "o")]) == 1
