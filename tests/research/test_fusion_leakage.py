"""The fusion's leakage guard is by patient identity: PatientID and issuer, and every expression sample imported
for the patient, not only the sample the fusion uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.fusion import MODALITIES, FusionData
from research.expression import read_expression_cohort
from research.fusion import FusionCohort, trained_on_patient


def _cohort() -> FusionCohort:
    """P1 has two imported samples: S1a (the expression model trained on it) and S1b (the newer one, which the
    fusion uses). P2's sample S2 was not trained on. P3's sample is unknown to the model, but the model's card names
    P3 (issuer H) among its training patients."""
    data = FusionData(
        {m: np.zeros((3, 2)) for m in MODALITIES}, np.ones((3, len(MODALITIES)), bool), np.array([0, 1, 0])
    )
    return FusionCohort(
        data,
        keys=[("P1", "H"), ("P2", "H"), ("P3", "H")],
        tumour_types=["", "", ""],
        expression_samples=["S1b", "S2", "S3"],
        expression_sha256="0" * 64,
        expression_training_samples=frozenset({"S1a", "S9"}),
        cytact_model="",
        imaging_dim=2,
        patient_samples=[("S1a", "S1b"), ("S2",), ("S3",)],
        expression_training_patients=frozenset({("P3", "H")}),
    )


def test_one_patient_under_two_sample_ids_is_caught() -> None:
    cohort = _cohort()
    assert [trained_on_patient(cohort, row) for row in range(3)] == [True, False, True]
    # By the sample in use only (the guard before issue 21), P1 and P3 would have passed.
    by_sample = [cohort.expression_samples[r] in cohort.expression_training_samples for r in range(3)]
    assert by_sample == [False, False, False]
    # The issuer is part of the identity: P3 of another issuer is another patient.
    other = FusionCohort(**{**_cohort().__dict__, "keys": [("P1", "H"), ("P2", "H"), ("P3", "OTHER")]})
    assert not trained_on_patient(other, 2)


def test_an_expression_cohort_may_name_its_patients(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text("sample,response,PatientID,IssuerOfPatientID,GZMA\nS1,1,P1,H,3.5\nS2,0,,,1.0\nS3,0,P1,H,2.0\n")
    cohort = read_expression_cohort(path)
    assert cohort.patients == (("P1", "H"), None, ("P1", "H"))
    assert all(set(profile) == {"GZMA"} for profile in cohort.profiles)  # identity columns are not genes
