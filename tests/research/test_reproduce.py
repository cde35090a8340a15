"""`immunode reproduce`: each method on a synthetic cohort shaped like the public ones, its figures beside the
paper's headline numbers in comparison.md."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from immunode.cli import main as cli_main
from models.expression_transformer import load_panel
from research.reproduce import PUBLISHED_AMU, published_signature
from tests.conftest import SHARED_DATA
from tests.research.test_outcomes import test_cli_joins_results_stored_by_the_node as _store_with_cytact
from tests.synthetic_cohorts import synthetic_cohort, write_training_table

PUBLISHED = SHARED_DATA / "delta_radiomics_published.csv"


def _config(tmp_path: Path, make_settings) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(make_settings().model_dump(mode="json")))
    return config


def test_radiomics_on_a_cohort_shaped_like_the_papers(tmp_path: Path, make_settings) -> None:
    """19 patients, 12 oligo and 7 systemic, the 15 published Δ features (three with a planted difference)."""
    published = published_signature(PUBLISHED)
    rng = np.random.default_rng(3)
    systemic = np.array([False] * 12 + [True] * 7)
    table = tmp_path / "deltas.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["PatientID", "pattern", *published])
        for i, label in enumerate(systemic):
            values = rng.normal(0, 0.3, len(published)) + (label * 1.5) * (np.arange(len(published)) < 3)
            writer.writerow([f"P{i}", "systemic" if label else "oligo", *np.round(values, 4)])
    out = tmp_path / "reproduction"
    arguments = ["--config", str(_config(tmp_path, make_settings)), "reproduce", "radiomics", "--cohort", str(table)]
    assert cli_main([*arguments, "--published-table", str(PUBLISHED), "--out", str(out), "--quick"]) == 0
    text = (out / "comparison.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| AUC ")]
    assert len(rows) == 15 and "| 0.990 |" in rows[0]  # the paper's AUC beside ours
    assert "QUICK settings" in text and (out / "feature_tests.csv").exists()


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
    assert "| held-out test ROC AUC (the fair comparison) | 0.672 |" in text
    assert f"| parameters (160-gene panel) | {PUBLISHED_AMU['parameters (160-gene panel)']:,} |" in text
    assert "leaks test samples" in text and (out / "report.md").exists()


def test_cytact_against_the_papers_hazard_ratios(tmp_path: Path, make_settings) -> None:
    _store_with_cytact(tmp_path, make_settings)  # six patients with stored CytAct and an outcome table
    config, outcomes = tmp_path / "config.yaml", tmp_path / "outcomes.csv"
    out = tmp_path / "reproduction"
    assert cli_main(["--config", str(config), "reproduce", "cytact", "--cohort", str(outcomes), "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    assert "| Cox HR PFS, high vs low minimum CytAct | 0.250 |" in text
    assert "| Cox HR OS, high vs low minimum CytAct | 0.180 |" in text
    assert "ROC AUC for response, min | n/a | 0.556 |" in text


def test_unknown_published_value_is_a_clear_error(tmp_path: Path, make_settings, capsys) -> None:
    from research.reproduce import parse_published

    assert parse_published(["attention_auc=0.81"]) == {"attention_auc": pytest.approx(0.81)}
    cohort = tmp_path / "fusion.csv"
    cohort.write_text("PatientID,response\nP1,CR\n")
    arguments = ["--config", str(_config(tmp_path, make_settings)), "reproduce", "fusion", "--cohort", str(cohort)]
    assert cli_main([*arguments, "--published", "attention_auc=high", "--out", str(tmp_path / "o")]) == 1
