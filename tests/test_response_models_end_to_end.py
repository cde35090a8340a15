"""Genomic and clinical response models end to end: training commands with reports, the fusion trained from
the node's store, and a PET/CT sent by dcmtk whose SR carries the expression and fusion probabilities, the
modality weights and the LIPI category."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from common.states import JobState
from common.types import LESION_RESULTS, LesionRecord
from immunode.cli import main as cli_main
from models.cards import sha256_file
from models.expression_transformer import load_panel
from models.serving import load_cytact
from pipelines.omics.response import predict_response
from pipelines.types import ModelIdentity
from storage.database import Database
from storage.records import write_records
from storage.schema import Job, Patient, Study, StudyState
from tests.conftest import StoreSCP, storescu, wait_until
from tests.sr_content import study_results
from tests.synthetic import write_study
from tests.synthetic_cohorts import synthetic_cohort, write_import_files, write_training_table

IMAGING_PATIENTS = 150  # of 200 synthetic patients, the others lack the imaging modality


def _config(tmp_path: Path, database_url: str, extra: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  url: {database_url}\nstorage:\n  root: {tmp_path / 'data'}\n{extra}")
    return config


def _seed_lesion_embeddings(database_url: str, cohort, cytact: ModelIdentity) -> None:
    """Lesion results as the PET pipeline stores them, for patients analysed before (imaging modality)."""
    database = Database(database_url)
    try:
        with database.session() as session:
            for i in range(IMAGING_PATIENTS):
                patient = session.query(Patient).filter_by(patient_id=cohort.patient_ids[i]).one()
                study = Study(study_instance_uid=f"1.2.826.0.1.3680043.99.{i}", patient_fk=patient.id)
                study.state = StudyState.COMPLETE
                session.add(study)
                session.flush()
                job = Job(study_fk=study.id, pipeline="pet_quant", study_revision=1, state=JobState.SUCCEEDED)
                session.add(job)
                session.flush()
                lesions = [
                    LesionRecord(
                        series_instance_uid=f"1.2.826.0.1.3680043.98.{i}",
                        lesion_number=number,
                        tracking_uid=f"1.2.826.0.1.3680043.97.{i}.{number}",
                        suv_max=5.0,
                        suv_mean=3.0,
                        suv_peak=4.0,
                        metabolic_volume_ml=2.0,
                        total_lesion_glycolysis=6.0,
                        long_axis_mm=15.0,
                        short_axis_mm=10.0,
                        recist_target=True,
                        cytact=0.1,
                        cytact_model=cytact.key,
                        embedding=tuple(float(v) for v in embedding),
                    )
                    for number, embedding in enumerate(cohort.imaging[i], start=1)
                ]
                write_records(session, job.id, study.id, lesions, [LESION_RESULTS])
    finally:
        database.dispose()


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.timeout(1200)
def test_train_from_store_then_serve_in_the_pet_report(
    tmp_path: Path, make_settings, pacs: StoreSCP, torch_threads_restored, capsys
) -> None:
    from tests.test_end_to_end import _by_class, _destination

    panel = load_panel()
    cohort = synthetic_cohort(panel.genes, patients=200, seed=21)
    settings = make_settings()
    config = _config(tmp_path, settings.database_url)
    base = ["--config", str(config)]

    # 1. Expression transformer and baselines on the same splits, with the report.
    table = write_training_table(cohort, tmp_path / "cohort.csv")
    out = tmp_path / "expression"
    # Six epochs of two layers: over cohort seeds 21-26 the mean held-out AUC of the two splits was 0.91-1.00.
    train = ["train", "expression", "--cohort", str(table), "--out", str(out), "--splits", "2", "--epochs", "6"]
    assert cli_main(base + train + ["--layers", "2", "--grid", "quick", "--shap-samples", "10", "--synthetic"]) == 0
    metrics = _rows(out / "metrics.csv")
    assert {r["model"] for r in metrics} == {"transformer", "svm", "random_forest", "adaboost", "xgboost", "cnn1d"}
    assert len([r for r in metrics if r["model"] == "transformer"]) == 3  # two splits and their mean
    mean = next(r for r in metrics if r["model"] == "transformer" and r["split"] == "mean")
    assert float(mean["roc_auc"]) >= 0.8
    for name in ("roc.png", "pr.png", "report.md", "gene_importance.csv", "gene_embedding_similarity.csv"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "8 heads (20-D each) on 20-D gene embeddings" in report and "the paper's model: 83,462" in report
    # Like for like: the means over held-out splits beside the paper's validation figures, its test figures apart.
    assert "validation split (ROC AUC 0.941, mAP 0.960, F1 / accuracy 0.930" in report and "ROC AUC 0.672" in report
    assert "f1_macro" in report and "f1_weighted" in report and "quick grid" in report
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importance = _rows(out / "gene_importance.csv")
    assert len(importance) == len(panel.genes)
    assert len(_rows(out / "gene_embedding_similarity.csv")) == len(panel.genes)
    expression_weights = out / "expression-transformer.pt"
    assert (
        cli_main(
            base
            + [
                "evaluate",
                "expression",
                "--cohort",
                str(table),
                "--weights",
                str(expression_weights),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )  # noqa: E501
    assert float(_rows(tmp_path / "eval" / "metrics.csv")[0]["roc_auc"]) >= 0.8

    # 2. Imports (genes x samples, mapping, clinical) and imaging embeddings in the store; fusion from the store.
    matrix, mapping, clinical = write_import_files(cohort, tmp_path / "imports")
    assert cli_main(base + ["import", "expression", str(matrix), "--mapping", str(mapping), "--units", "tpm"]) == 0
    assert cli_main(base + ["import", "clinical", str(clinical)]) == 0
    _, card = load_cytact(None)
    shipped = ModelIdentity(card.name, card.version, card.sha256, card.synthetic_training_data)
    _seed_lesion_embeddings(settings.database_url, cohort, shipped)
    labels = tmp_path / "fusion-cohort.csv"
    labels.write_text(
        "PatientID,IssuerOfPatientID,response\n" + "".join(f"{p},SYNTH,\n" for p in cohort.patient_ids)
    )  # blank response: the imported best response is the label
    fusion_out = tmp_path / "fusion"
    fusion = ["train", "fusion", "--cohort", str(labels), "--out", str(fusion_out), "--bootstrap", "100"]
    fusion += ["--expression-weights", str(expression_weights), "--synthetic"]
    # The expression model was trained on every patient: testing the fusion on them would leak the label.
    assert cli_main(base + fusion) == 1
    assert "expression model was trained on" in capsys.readouterr().err
    assert cli_main(base + fusion + ["--retrain-expression"]) == 0
    fusion_report = (fusion_out / "report.md").read_text()
    assert "retrained on the" in fusion_report and "not ImageNet weights" in fusion_report
    assert "mutation vector / TMB is not an input" in fusion_report and "dNLR is added" in fusion_report
    assert (fusion_out / "expression-transformer-fusion-split.pt").exists()
    expression_weights = fusion_out / "expression-transformer-fusion-split.pt"  # served with this fusion
    fusion_metrics = _rows(fusion_out / "metrics.csv")
    attention_auc = next(r for r in fusion_metrics if r["model"] == "attention" and r["metric"] == "roc_auc")
    assert float(attention_auc["value"]) >= 0.8
    assert float(attention_auc["ci_low"]) <= float(attention_auc["value"]) <= float(attention_auc["ci_high"])
    assert any(r["model"] == "concat" for r in fusion_metrics)  # the ablation
    assert {"clinical-only", "imaging-only", "genomic-only"} <= {r["model"] for r in fusion_metrics}  # unimodal
    assert {"sensitivity", "specificity"} <= {r["metric"] for r in fusion_metrics}
    weights = _rows(fusion_out / "modality_weights.csv")
    assert len(weights) == 200
    no_imaging = next(r for r in weights if r["PatientID"] == cohort.patient_ids[-1])
    assert no_imaging["imaging"] == "" and float(no_imaging["genomic"]) + float(no_imaging["clinical"]) == (
        pytest.approx(1.0, abs=1e-3)
    )
    fusion_weights = fusion_out / "fusion.pt"
    # The reproduction report of the fusion: its figures beside the paper's, given on the command line.
    reproduction = ["reproduce", "fusion", "--cohort", str(labels), "--out", str(tmp_path / "repro"), "--quick"]
    assert cli_main(base + reproduction + ["--published", "attention_auc=0.8"]) == 0
    comparison = (tmp_path / "repro" / "comparison.md").read_text()
    assert "| attention ROC AUC | 0.800 | as given |" in comparison and "| clinical-only ROC AUC | n/a |" in comparison
    assert "no mutation vector / TMB input, head on frozen embeddings, dNLR added" in comparison
    assert (
        cli_main(
            base
            + [
                "evaluate",
                "fusion",
                "--cohort",
                str(labels),
                "--weights",
                str(fusion_weights),
                "--expression-weights",
                str(expression_weights),
                "--out",
                str(tmp_path / "feval"),
            ]
        )
        == 0
    )  # noqa: E501

    # 3. A PET/CT of a patient with imported data: the SR carries the response models.
    study = write_study(tmp_path / "scanner", patient_id="SYN0001")
    index_of = {"S0001": "SYN0001"}
    (tmp_path / "pet-patient.csv").write_text(
        "sample_id,PatientID,IssuerOfPatientID\n" + "".join(f"{s},{p},IMMUNODE-TEST\n" for s, p in index_of.items())
    )
    assert (
        cli_main(
            base
            + [
                "import",
                "expression",
                str(matrix),
                "--mapping",
                str(tmp_path / "pet-patient.csv"),
                "--units",
                "tpm",
                "--orientation",
                "genes-x-samples",
            ]
        )
        == 1
    )  # noqa: E501
    single = tmp_path / "one-sample.tsv"
    with matrix.open() as source, single.open("w") as target:
        for line in source:
            cells = line.rstrip("\n").split("\t")
            target.write("\t".join([cells[0], cells[2]]) + "\n")  # the gene column and sample S0001
    assert (
        cli_main(
            base
            + ["import", "expression", str(single), "--mapping", str(tmp_path / "pet-patient.csv"), "--units", "tpm"]
        )
        == 0
    )  # noqa: E501
    (tmp_path / "pet-clinical.csv").write_text(
        "PatientID,IssuerOfPatientID,age,sex,ecog,ldh,ldh_uln,neutrophils,wbc\nSYN0001,IMMUNODE-TEST,64,M,1,400,250,7,9\n"
    )
    assert cli_main(base + ["import", "clinical", str(tmp_path / "pet-clinical.csv")]) == 0

    from immunode.service import Node

    node_settings = make_settings(
        settings.database_url,
        destinations=_destination(pacs.port),
        pipelines={"response": {"expression_weights": str(expression_weights), "fusion_weights": str(fusion_weights)}},
    )
    node = Node(node_settings)
    node.start()
    try:
        assert storescu(node.port, list(study.pet_files) + list(study.ct_files)).returncode == 0
        received = wait_until(lambda: pacs.received() if len(pacs.received()) >= 2 else None, timeout_s=180)
    finally:
        node.stop()
    (sr_ds,) = _by_class(received)["Comprehensive 3D SR Storage"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert sr.content.get_volumetric_roi_measurement_groups()  # the lesions are still reported
    # The patient's results: not a measurement group (viewers take those for lesions) but derived measurements
    # and qualitative evaluations of the report.
    assert sr.content.get_image_measurement_groups() == []
    values, evaluations = study_results(sr_ds)
    assert 0.0 <= values["ICI response probability, expression transformer"] <= 1.0
    assert 0.0 <= values["ICI response probability, attention fusion"] <= 1.0
    modality = [values[f"Fusion modality weight, {m}"] for m in ("imaging", "genomic", "clinical")]
    assert sum(modality) == pytest.approx(1.0, abs=1e-4)
    assert values["Derived neutrophil-to-lymphocyte ratio"] == pytest.approx(3.5)
    assert evaluations["Lung Immune Prognostic Index"] == "LIPI poor"
    text = _texts(sr_ds)
    # Algorithm identification (TID 4019) of each patient-level value, weights hash included.
    for algorithm in ("immunode-expression-transformer", "immunode-attention-fusion", "immunode-lipi"):
        assert algorithm in text
    assert f"sha256:{sha256_file(expression_weights)}" in text and f"sha256:{sha256_file(fusion_weights)}" in text
    assert "Expression transformer immunode-expression-transformer 1.0.0" in text
    assert "SYNTHETIC training data" in text and "LIPI (Mezquita 2018, from imported clinical data): poor" in text
    assert "not a prediction of treatment response" in text
    # The published fusion's imaging arm is histology: the SR says this patient has none and that the PET
    # modality is not the published method's.
    assert "no whole-slide histology for this patient" in text
    assert "fourth modality that the published method does not have" in text


def _texts(dataset: pydicom.Dataset) -> str:
    found = []

    def walk(items) -> None:
        for item in items:
            if "TextValue" in item:
                found.append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(dataset.ContentSequence)
    return " ".join(found)


def test_absent_data_and_weights_are_stated(tmp_path: Path, make_settings) -> None:
    from pipelines.omics.report import response_statements

    settings = make_settings().pipelines.response
    statements = response_statements(predict_response(None, None, None, settings))
    assert statements == [
        "Expression transformer not computed: no expression model configured (pipelines.response.expression_weights).",
        "Attention fusion not computed: no fusion model configured (pipelines.response.fusion_weights).",
        "LIPI not computed: no clinical data imported for this patient.",
        "Blood immune profile not reported: no blood immune profile imported for this patient.",
    ]
