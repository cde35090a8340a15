"""Outcome statistics checked against values computed by hand on a small table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from sqlalchemy import select

from common.states import JobState
from immunode.cli import main as cli_main
from research.outcomes import OutcomeTableError, analyse, joined_table, read_outcomes, write_report
from storage.database import Database
from storage.schema import Job, LesionResult, Patient, Study

# Six patients; minimum CytAct 0.5, 0.2, -0.1, -0.3, 0.4, -0.5.
OUTCOMES = """PatientID,best_response,pfs_months,pfs_event,os_months,os_event
P1,CR,20,0,30,0
P2,PR,12,1,25,0
P3,SD,6,1,14,1
P4,PD,3,1,8,1
P5,PD,9,1,18,1
P6,PR,4,1,10,1
"""
CYTACT = {
    ("P1", ""): [0.5, 0.9],
    ("P2", ""): [0.2, 0.6],
    ("P3", ""): [-0.1, 0.3],
    ("P4", ""): [-0.3, 0.5],
    ("P5", ""): [0.4, 0.45],
    ("P6", ""): [-0.5, -0.2],
}


def _table(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "outcomes.csv"
    path.write_text(OUTCOMES)
    table, unmatched = joined_table(read_outcomes(path), CYTACT)
    assert unmatched == []
    return table


def test_statistics_match_hand_computation(tmp_path: Path) -> None:
    table = _table(tmp_path)
    result = analyse(table, low_group_cutoff=-0.107)
    # Responders P1, P2, P6 have minima 0.5, 0.2, -0.5; non-responders -0.1, -0.3, 0.4. Of the 9 pairs the
    # responder is higher in 0.5>all three (3), 0.2>-0.1,-0.3 (2), -0.5>none (0): AUC = 5/9.
    assert result.auc == pytest.approx(5 / 9)
    # Spearman of minima vs PFS: ranks of minima (6,4,3,2,5,1) vs PFS (6,5,3,1,4,2): d = 0,-1,0,1,1,-1,
    # sum d^2 = 4, rho = 1 - 6*4 / (6*35) = 1 - 24/210.
    assert result.spearman["cytact_min vs pfs_months"][0] == pytest.approx(1 - 24 / 210)
    # Rank-sum: ranks of responders' minima among all six are 6, 4, 1 (sum 11); expected 10.5, SD sqrt(5.25).
    assert result.rank_sum["cytact_min: responders vs non-responders"][0] == pytest.approx(0.5 / np.sqrt(5.25))
    # Low group (minimum < -0.107): P4 and P6.
    assert set(table.PatientID[table.cytact_min < -0.107]) == {"P4", "P6"}
    hr, low, high, _ = result.cox["pfs"]
    assert low < hr < high and hr > 1  # the low group progresses earlier here
    assert 0 < result.logrank["pfs"] < 1


def test_kaplan_meier_matches_the_product_limit_by_hand(tmp_path: Path) -> None:
    table = _table(tmp_path)
    high = table[table.cytact_min >= -0.107]  # P1 (20, censored), P2 (12), P3 (6), P5 (9)
    fitter = KaplanMeierFitter().fit(high.pfs_months, high.pfs_event)
    # Events at 6 (4 at risk), 9 (3 at risk), 12 (2 at risk): S(12) = 3/4 * 2/3 * 1/2 = 0.25.
    assert fitter.survival_function_at_times(12).iloc[0] == pytest.approx(0.25)


def test_report_has_table_and_plots(tmp_path: Path) -> None:
    table = _table(tmp_path)
    report = write_report(table, analyse(table, -0.107), -0.107, tmp_path / "out")
    text = report.read_text()
    assert "RESEARCH USE ONLY" in text and "ROC AUC" in text and "Cox HR PFS" in text
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
            study = Study(study_instance_uid=f"1.2.3.{number}", patient=patient)
            job = Job(study=study, pipeline="pet_quant", study_revision=1, state=JobState.SUCCEEDED)
            session.add(job)
            session.flush()
            for lesion, score in enumerate(scores, start=1):
                session.add(
                    LesionResult(
                        job_fk=job.id,
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
                    )
                )
    with database.session() as session:
        assert len(session.scalars(select(LesionResult)).all()) == 12
    database.dispose()
    config = tmp_path / "config.yaml"
    config.write_text(__import__("yaml").safe_dump(settings.model_dump(mode="json")))
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text(OUTCOMES)
    out = tmp_path / "report"
    assert cli_main(["--config", str(config), "analyse-outcomes", "--outcomes", str(outcomes), "--out", str(out)]) == 0
    assert "ROC AUC, minimum CytAct for response | 0.556" in (out / "report.md").read_text()
