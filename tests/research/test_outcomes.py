"""Outcome statistics of the PET immune-profiling method checked against values computed by hand on a small
table; the choice of each patient's pre-treatment PET and of one model identity; the command on the store."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from sqlalchemy import select

from common.states import JobState
from common.types import LESION_RESULTS, LesionRecord
from immunode.cli import main as cli_main
from research.outcomes import (
    MEDIAN_SPLIT,
    METHOD_WINDOW_DAYS,
    OutcomeTableError,
    analyse,
    choose_analyses,
    joined_table,
    lesion_pairs,
    read_lesion_changes,
    read_outcomes,
    write_report,
)
from storage.database import Database
from storage.records import read_records, write_records
from storage.schema import Job, Patient, Study
from storage.types import LesionCytAct, PetCytActAnalysis

# Six patients; minimum CytAct 0.5, 0.2, -0.1, -0.3, 0.4, -0.5.
OUTCOMES = """PatientID,best_response,pfs_months,pfs_event,os_months,os_event,therapy_start
P1,CR,20,0,30,0,2026-03-01
P2,PR,12,1,25,0,2026-03-01
P3,SD,6,1,14,1,2026-03-01
P4,PD,3,1,8,1,2026-03-01
P5,PD,9,1,18,1,2026-03-01
P6,PR,4,1,10,1,2026-03-01
"""
CYTACT = {
    ("P1", ""): [0.5, 0.9],
    ("P2", ""): [0.2, 0.6],
    ("P3", ""): [-0.1, 0.3],
    ("P4", ""): [-0.3, 0.5],
    ("P5", ""): [0.4, 0.45],
    ("P6", ""): [-0.5, -0.2],
}
MODEL = "cnn 1 sha256:0123456789abcdef"
THERAPY = {key: date(2026, 3, 1) for key in CYTACT}


def _analysis(key: tuple[str, str], scores: list[float], when: date, job: int, model: str = MODEL) -> PetCytActAnalysis:
    lesions = tuple(LesionCytAct(f"2.25.{job}{n}", n, s, 20.0, True) for n, s in enumerate(scores, start=1))
    # An extra lesion below the RECIST target size: predicted, but not in the patient summary.
    lesions += (LesionCytAct(f"2.25.{job}9", 9, -2.0, 6.0, False),)
    return PetCytActAnalysis(key[0], key[1], f"1.2.{job}", when, job, model, lesions)


ANALYSES = [_analysis(key, scores, date(2026, 2, 20), job) for job, (key, scores) in enumerate(CYTACT.items())]


def _table(tmp_path: Path) -> tuple[pd.DataFrame, object]:
    path = tmp_path / "outcomes.csv"
    path.write_text(OUTCOMES)
    selection = choose_analyses(ANALYSES, THERAPY, 60)
    table, unmatched = joined_table(read_outcomes(path), selection)
    assert unmatched == [] and selection.left_out == ()
    return table, selection


def test_statistics_match_hand_computation(tmp_path: Path) -> None:
    table, _ = _table(tmp_path)
    result = analyse(table, -0.107, "given")
    # Responders P1, P2, P6 have minima 0.5, 0.2, -0.5; non-responders -0.1, -0.3, 0.4. Of the 9 pairs the
    # responder is higher in 0.5>all three (3), 0.2>-0.1,-0.3 (2), -0.5>none (0): AUC = 5/9.
    assert result.auc["cytact_min"] == pytest.approx(5 / 9)
    # Maxima: responders 0.9, 0.6, -0.2; others 0.3, 0.5, 0.45: 0.9 > 3, 0.6 > 3, -0.2 > 0: AUC 6/9.
    assert result.auc["cytact_max"] == pytest.approx(6 / 9)
    assert set(result.auc) == {"cytact_min", "cytact_mean", "cytact_max"}
    # Spearman of minima vs PFS: ranks of minima (6,4,3,2,5,1) vs PFS (6,5,3,1,4,2): d = 0,-1,0,1,1,-1,
    # sum d^2 = 4, rho = 1 - 6*4 / (6*35) = 1 - 24/210.
    assert result.spearman["cytact_min vs pfs_months"][0] == pytest.approx(1 - 24 / 210)
    # Rank-sum: ranks of responders' minima among all six are 6, 4, 1 (sum 11); expected 10.5, SD sqrt(5.25).
    assert result.rank_sum["cytact_min: responders vs non-responders"][0] == pytest.approx(0.5 / np.sqrt(5.25))
    # Low group (minimum < -0.107): P4 and P6. The hazard ratio is of the HIGH group, as the paper reports it.
    assert set(table.PatientID[table.cytact_min < -0.107]) == {"P4", "P6"}
    hr, low, high, _ = result.cox["high vs low CytAct pfs"]
    assert low < hr < high and hr < 1  # the high group progresses later here
    assert 0 < result.logrank["high vs low CytAct pfs"] < 1
    # Heterogeneity: variances 0.08, 0.08, 0.08, 0.32, 0.00125, 0.045; median split at 0.08 (above: P4 only).
    assert result.variance_cutoff == pytest.approx(0.08) and result.variance_source == MEDIAN_SPLIT
    assert "high vs low heterogeneity pfs" in result.cox
    # A site's cut-off is labelled as the site's: the paper gives none.
    site = analyse(table, -0.107, "given", variance_cutoff=0.1)
    assert site.variance_cutoff == 0.1 and site.variance_source.startswith("the site's cut-off")


def test_the_methods_pre_treatment_window_is_three_months() -> None:
    """A PET 80 days before the therapy start is the method's pre-treatment PET (3 months = 91 days), not a 60-day
    window's; one 100 days before is neither."""
    early = [_analysis(("P1", ""), [0.5, 0.9], date(2026, 3, 1) - timedelta(days=days), job) for job, days in
             ((1, 80), (2, 100))]  # fmt: skip
    chosen = choose_analyses(early[:1], THERAPY, METHOD_WINDOW_DAYS)
    assert METHOD_WINDOW_DAYS == 91 and ("P1", "") in chosen.chosen and "the method's 3 months" in chosen.rule
    narrow = choose_analyses(early[:1], THERAPY, 60)
    assert narrow.chosen == {} and "not the method's 3 months" in narrow.rule
    assert choose_analyses(early[1:], THERAPY, METHOD_WINDOW_DAYS).chosen == {}


def test_without_a_cutoff_the_youden_value_is_used_and_said(tmp_path: Path) -> None:
    table, _ = _table(tmp_path)
    result = analyse(table)
    assert result.cutoff == pytest.approx(result.optimal_cutoff) and "Youden" in result.cutoff_source


def test_pre_treatment_pet_and_one_model_are_chosen() -> None:
    key = ("P1", "")
    analyses = [
        _analysis(key, [0.1], date(2026, 2, 20), 1),
        _analysis(key, [0.2], date(2026, 2, 27), 2),  # the latest before the therapy start
        _analysis(key, [0.3], date(2026, 4, 1), 3),  # on treatment: not a baseline
        _analysis(("P2", ""), [0.4], date(2025, 10, 1), 4),  # too early
        _analysis(("P3", ""), [0.5], date(2026, 2, 27), 5, model="other 1 sha256:ffff"),
        _analysis(("P4", ""), [0.6], date(2026, 2, 27), 6),
        _analysis(("P5", ""), [0.7], date(2026, 2, 27), 7),
    ]
    starts = {k: date(2026, 3, 1) for k in [("P1", ""), ("P2", ""), ("P3", ""), ("P4", "")]}
    selection = choose_analyses(analyses, starts, 60)
    assert selection.chosen[key].job_id == 2 and selection.model == MODEL
    assert set(selection.chosen) == {key, ("P4", "")}
    reasons = " | ".join(selection.left_out)
    assert "P2: no PET analysed within 60 days" in reasons and "P3: analysed with other" in reasons
    assert "P5: no therapy start" in reasons
    anything = choose_analyses(analyses, starts, None)
    assert anything.chosen[key].job_id == 3 and "not the method" in anything.rule


def test_lesion_cytact_against_size_change(tmp_path: Path) -> None:
    _, selection = _table(tmp_path)
    path = tmp_path / "changes.csv"
    path.write_text("PatientID,lesion,size_change_percent\nP1,1,-40\nP2,1,-10\nP4,1,35\nP6,2.25.51,60\n")
    pairs = lesion_pairs(selection, read_lesion_changes(path))
    assert pairs == [(0.5, -40.0), (0.2, -10.0), (-0.3, 35.0), (-0.5, 60.0)]
    table, _ = _table(tmp_path)
    rho, p, n = analyse(table, -0.107, "given", lesion_pairs=pairs).lesion_spearman
    assert (rho, n) == (pytest.approx(-1.0), 4)


def test_kaplan_meier_matches_the_product_limit_by_hand(tmp_path: Path) -> None:
    table, _ = _table(tmp_path)
    high = table[table.cytact_min >= -0.107]  # P1 (20, censored), P2 (12), P3 (6), P5 (9)
    fitter = KaplanMeierFitter().fit(high.pfs_months, high.pfs_event)
    # Events at 6 (4 at risk), 9 (3 at risk), 12 (2 at risk): S(12) = 3/4 * 2/3 * 1/2 = 0.25.
    assert fitter.survival_function_at_times(12).iloc[0] == pytest.approx(0.25)


def test_report_has_table_and_plots(tmp_path: Path) -> None:
    table, selection = _table(tmp_path)
    report = write_report(table, analyse(table, -0.107, "given"), selection, tmp_path / "out")
    text = report.read_text()
    assert "RESEARCH USE ONLY" in text and "ROC AUC, max CytAct" in text and "Cox HR high vs low CytAct pfs" in text
    assert "HIGH group against the low group" in text and "within 60 days before the therapy start" in text
    for plot in ("km_pfs.png", "km_os.png", "roc_response.png"):
        assert (tmp_path / "out" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_outcome_row_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(OUTCOMES.replace("P3,SD", "P3,maybe"))
    with pytest.raises(OutcomeTableError, match="row 4, best_response"):
        read_outcomes(path)


def test_cli_joins_results_stored_by_the_node(tmp_path: Path, make_settings) -> None:
    settings = make_settings()
    database = Database(settings.database_url)
    with database.session() as session:
        for number, ((patient_id, _), scores) in enumerate(CYTACT.items()):
            patient = Patient(patient_id=patient_id, issuer_of_patient_id="")
            study = Study(study_instance_uid=f"1.2.3.{number}", patient=patient, study_date="20260220")
            job = Job(study=study, pipeline="pet_quant", study_revision=1, state=JobState.SUCCEEDED)
            session.add(job)
            session.flush()
            lesions = [
                LesionRecord(
                    series_instance_uid="1.2",
                    lesion_number=lesion,
                    tracking_uid=f"2.25.{lesion}",
                    suv_max=5,
                    suv_mean=3,
                    suv_peak=4,
                    metabolic_volume_ml=2,
                    total_lesion_glycolysis=6,
                    long_axis_mm=15,
                    short_axis_mm=10,
                    recist_target=True,
                    cytact=score,
                    cytact_model=MODEL,
                    patient_summary=score > -3,  # the third lesion is not one of the summary's
                )
                for lesion, score in enumerate([*scores, -3.0], start=1)
            ]
            write_records(session, job.id, study.id, lesions, [LESION_RESULTS])
    with database.session() as session:
        assert len(read_records(session, LESION_RESULTS)) == 18
    database.dispose()
    config = tmp_path / "config.yaml"
    config.write_text(__import__("yaml").safe_dump(settings.model_dump(mode="json")))
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text(OUTCOMES)
    out = tmp_path / "report"
    assert cli_main(["--config", str(config), "analyse-outcomes", "--outcomes", str(outcomes), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "ROC AUC, min CytAct for response | 0.556" in text and f"model: {MODEL}" in text
    assert "Youden-optimal minimum (optimistic)" in text  # no cut-off configured for these weights
