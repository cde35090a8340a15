"""Expression, clinical and blood immune-profile imports: parsing, exact error reports, derived scores,
idempotent and transactional storage (on SQLite and PostgreSQL); the blood profile's change beside LIPI."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from immunode.cli import main as cli_main
from pipelines.errors import ImportRejected
from pipelines.omics.imports import (
    derived_nlr,
    lipi_category,
    read_blood_file,
    read_clinical_file,
    read_expression_file,
)
from pipelines.omics.response import blood_changes
from pipelines.omics.settings import BloodMarker, ResponseModelSettings
from storage import patients
from storage.database import Database
from storage.schema import ClinicalRecord, Event, ExpressionSample

MAPPING = "sample_id,PatientID,IssuerOfPatientID\nT1,P1,HOSP\nT2,P2,HOSP\n"
GENES_BY_SAMPLES = "gene\tT1\tT2\nGZMA\t10\t1\nPRF1\t40\t4\nCD8A\t50\t95\n"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _problems(call) -> list[str]:
    with pytest.raises(ImportRejected) as caught:
        call()
    return [str(p) for p in caught.value.problems]


def test_genes_by_samples_is_detected_and_scores_derived(tmp_path: Path) -> None:
    mapping = _write(tmp_path, "samples.csv", MAPPING)
    imported = read_expression_file(_write(tmp_path, "expr.tsv", GENES_BY_SAMPLES), mapping, "tpm")
    assert imported.orientation == "genes x samples"
    assert imported.orientation_reason == "2 of 2 header cells are mapped sample IDs"
    first = imported.profiles[0]
    assert (first.sample_id, first.patient_id, first.issuer_of_patient_id) == ("T1", "P1", "HOSP")
    # Rooney CytAct on TPM rescaled to the sample total (100): GZMA 1e5, PRF1 4e5 per million.
    assert first.cytact == pytest.approx(math.sqrt((1e5 + 0.01) * (4e5 + 0.01)))
    assert first.ifng6 is None  # the six IFN-gamma genes are not all in the file


def test_samples_by_genes_is_detected(tmp_path: Path) -> None:
    mapping = _write(tmp_path, "samples.csv", MAPPING)
    text = "sample,GZMA,PRF1,CD8A\nT1,10,40,50\nT2,1,4,95\n"
    imported = read_expression_file(_write(tmp_path, "expr.csv", text), mapping, "tpm")
    assert imported.orientation == "samples x genes"
    assert imported.orientation_reason == "2 of 2 first-column cells are mapped sample IDs"
    assert imported.profiles[1].values == {"GZMA": 1.0, "PRF1": 4.0, "CD8A": 95.0}


def test_wrong_delimiter_is_named(tmp_path: Path) -> None:
    mapping = _write(tmp_path, "samples.csv", MAPPING)
    comma_file_named_tsv = _write(tmp_path, "expr.tsv", GENES_BY_SAMPLES.replace("\t", ","))
    assert _problems(lambda: read_expression_file(comma_file_named_tsv, mapping, "tpm")) == [
        "expr.tsv: row 1: the header has one column when split on tab; it looks comma-separated "
        "(give --delimiter or use the matching extension)"
    ]


def test_duplicate_genes_non_numeric_values_and_unknown_patients_are_all_reported(tmp_path: Path) -> None:
    mapping = _write(tmp_path, "samples.csv", MAPPING)
    text = "gene\tT1\tT2\tT9\nGZMA\t10\t1\t3\nPRF1\tabc\t4\t5\ngzma\t2\t-1\t\n"
    problems = _problems(lambda: read_expression_file(_write(tmp_path, "bad.tsv", text), mapping, "tpm"))
    assert problems == [
        "bad.tsv: row 4, column 'gene': duplicate gene 'GZMA' (first at row 2)",
        "bad.tsv: row 1, column 'T9': unknown patient: sample 'T9' is not in the mapping file",
        "bad.tsv: row 3, column 'T1': not a number: 'abc'",
        "bad.tsv: row 4, column 'T2': negative expression value -1",
        "bad.tsv: row 4, column 'T9': empty value",
    ]


def test_counts_must_be_whole_numbers(tmp_path: Path) -> None:
    mapping = _write(tmp_path, "samples.csv", MAPPING)
    problems = _problems(
        lambda: read_expression_file(
            _write(tmp_path, "c.tsv", GENES_BY_SAMPLES.replace("40", "40.5")), mapping, "counts"
        )
    )
    assert problems == ["c.tsv: row 3, column 'T1': raw counts must be whole numbers, got 40.5"]


def test_mapping_without_any_sample_of_the_file(tmp_path: Path) -> None:
    mapping = _write(tmp_path, "samples.csv", "sample_id,PatientID\nX1,P1\n")
    assert _problems(lambda: read_expression_file(_write(tmp_path, "e.tsv", GENES_BY_SAMPLES), mapping, "tpm")) == [
        "e.tsv: row 1: no sample of the mapping file is in the header or the first column: cannot tell the "
        "orientation (check the mapping, or give --orientation)"
    ]


def test_clinical_values_are_checked_with_row_and_column(tmp_path: Path) -> None:
    text = (
        "PatientID,age,sex,ecog,ldh,ldh_uln,neutrophils,wbc,therapy_start,best_response,pfs_months,pfs_event,smoker\n"
        "P1,200,X,1.5,300,250,4,3,2026-13-01,XR,-2,2,yes\n"
    )
    problems = _problems(lambda: read_clinical_file(_write(tmp_path, "clin.csv", text)))
    assert problems[0].startswith("clin.csv: row 1, column 'smoker': unknown column; expected some of PatientID")
    text = text.replace(",smoker", "").replace(",yes", "")
    assert _problems(lambda: read_clinical_file(_write(tmp_path, "clin.csv", text))) == [
        "clin.csv: row 2, column 'age': out of range: 200",
        "clin.csv: row 2, column 'sex': sex must be M, F or O, got 'X'",
        "clin.csv: row 2, column 'ecog': ECOG must be a whole number 0-5, got 1.5",
        "clin.csv: row 2, column 'therapy_start': not a date (YYYY-MM-DD or YYYYMMDD): '2026-13-01'",
        "clin.csv: row 2, column 'best_response': must be one of CR, PR, SD, PD, NE",
        "clin.csv: row 2, column 'pfs_months': out of range: -2",
        "clin.csv: row 2, column 'pfs_event': must be 0 or 1, got '2'",
        "clin.csv: row 2, column 'neutrophils': neutrophils must be below the white-cell count (wbc)",
    ]


def test_dnlr_and_lipi() -> None:
    assert derived_nlr(6.0, 8.0) == pytest.approx(3.0)
    assert derived_nlr(None, 8.0) is None
    assert lipi_category(3.0, 250, 250) == "good"  # both rules are strict inequalities
    assert lipi_category(3.01, 250, 250) == "intermediate"
    assert lipi_category(2.0, 251, 250) == "intermediate"
    assert lipi_category(4.0, 400, 250) == "poor"
    assert lipi_category(None, 400, 250) == ""


CLINICAL = (
    "PatientID,IssuerOfPatientID,age,sex,ecog,ldh,ldh_uln,neutrophils,wbc,therapy_start,best_response\n"
    "P1,HOSP,61,F,1,400,250,7,9,2026-01-15,PD\n"
    "P2,HOSP,55,M,0,200,250,3,8,20260120,PR\n"
)


def test_imports_are_idempotent_and_transactional(tmp_path: Path, make_settings, database_url: str) -> None:
    settings = make_settings(database_url)
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  url: {settings.database_url}\nstorage:\n  root: {tmp_path / 'data'}\n")
    mapping = _write(tmp_path, "samples.csv", MAPPING)
    expression = _write(tmp_path, "expr.tsv", GENES_BY_SAMPLES)
    clinical = _write(tmp_path, "clinical.csv", CLINICAL)
    base = ["--config", str(config), "import"]
    assert cli_main(base + ["expression", str(expression), "--mapping", str(mapping), "--units", "tpm"]) == 0
    assert cli_main(base + ["clinical", str(clinical)]) == 0
    # Re-import with changed values updates in place.
    _write(tmp_path, "expr.tsv", GENES_BY_SAMPLES.replace("50\t95", "60\t95"))
    assert cli_main(base + ["expression", str(expression), "--mapping", str(mapping), "--units", "tpm"]) == 0
    assert cli_main(base + ["clinical", str(clinical)]) == 0
    # A bad file changes nothing, not even its good rows.
    _write(tmp_path, "clinical.csv", CLINICAL.replace("P2,HOSP,55", "P2,HOSP,555").replace("P1,HOSP,61", "P1,HOSP,62"))
    assert cli_main(base + ["clinical", str(clinical)]) == 1
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            assert session.scalar(select(func.count(ExpressionSample.id))) == 2
            assert session.scalar(select(func.count(ClinicalRecord.id))) == 2
            p1 = patients.patient_data(session, "P1", "HOSP")
            assert p1.expression.values["CD8A"] == 60.0
            assert p1.clinical.age_years == 61.0 and p1.clinical.therapy_start == date(2026, 1, 15)
            assert p1.clinical.lipi == "poor" and p1.clinical.dnlr == pytest.approx(3.5)
            p2 = patients.patient_data(session, "P2", "HOSP")
            assert p2.clinical.lipi == "good" and p2.clinical.best_response == "PR"
            assert patients.patient_data(session, "P1", "OTHER").clinical is None  # the issuer matters
            messages = session.scalars(select(Event.message)).all()
            assert any("clinical.csv rejected with 1 problem(s)" in m for m in messages)
    finally:
        database.dispose()


def test_clinical_columns_in_any_order(tmp_path: Path) -> None:
    imported = read_clinical_file(_write(tmp_path, "c.tsv", "age\tPatientID\tecog\n61\tP9\t2\n"))
    (record,) = imported.records
    assert (record.patient_id, record.age_years, record.ecog, record.issuer_of_patient_id) == ("P9", 61.0, 2, "")


BLOOD = (
    "PatientID,IssuerOfPatientID,time_point,date,nlr,cd8\nP1,HOSP,T0,2026-01-10,4.0,300\nP1,HOSP,T1,2026-03-20,2.0,\n"
)


def test_blood_profile_against_its_declared_schema(tmp_path: Path) -> None:
    markers = [BloodMarker(name="nlr", unit="1"), BloodMarker(name="cd8", unit="cells/uL")]
    imported = read_blood_file(_write(tmp_path, "blood.csv", BLOOD), markers)
    assert [(v.time_point, v.marker, v.value) for v in imported.values] == [
        ("T0", "nlr", 4.0),
        ("T0", "cd8", 300.0),
        ("T1", "nlr", 2.0),  # a blank cell is not measured
    ]
    assert imported.values[0].sample_date == date(2026, 1, 10) and imported.values[1].unit == "cells/uL"
    undeclared = _problems(lambda: read_blood_file(_write(tmp_path, "b2.csv", BLOOD.replace("cd8", "il2")), markers))
    assert undeclared == [
        "b2.csv: row 1, column 'il2': not a declared blood marker (pipelines.response.blood_markers: nlr, cd8)"
    ]
    bad = BLOOD.replace("T1,2026-03-20,2.0", "T2,2026-03-20,-2")
    problems = _problems(lambda: read_blood_file(_write(tmp_path, "b3.csv", bad), markers))
    assert problems == ["b3.csv: row 3, column 'time_point': must be T0 or T1, got 'T2'"]
    negative = BLOOD.replace("T1,2026-03-20,2.0", "T1,2026-03-20,-2")
    assert (
        "not a non-negative number"
        in _problems(lambda: read_blood_file(_write(tmp_path, "b4.csv", negative), markers))[0]
    )


def test_blood_import_is_stored_and_its_change_reported(tmp_path: Path, make_settings, database_url: str) -> None:
    settings = make_settings(database_url)
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  url: {settings.database_url}\nstorage:\n  root: {tmp_path / 'data'}\n")
    blood = _write(tmp_path, "blood.csv", BLOOD)
    assert cli_main(["--config", str(config), "import", "blood", str(blood)]) == 0
    assert cli_main(["--config", str(config), "import", "blood", str(blood)]) == 0  # again: replaced, not doubled
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            data = patients.patient_data(session, "P1", "HOSP")
    finally:
        database.dispose()
    assert len(data.blood) == 3
    changes, reason = blood_changes(data, ResponseModelSettings())
    (nlr,) = changes  # cd8 has no T1 value
    assert (nlr.marker, nlr.t0, nlr.t1, nlr.delta_percent) == ("nlr", 4.0, 2.0, -50.0) and reason == ""
    assert blood_changes(None, ResponseModelSettings())[1] == "no blood immune profile imported for this patient"
