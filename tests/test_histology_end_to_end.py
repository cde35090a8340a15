"""The histology arm end to end: whole-slide images (synthetic slides with planted immune infiltrates, and the
real CMU-1-Small-Region sample) are sent by dcmtk storescu and stored; without weights their jobs fail saying
so; `immunode train histology` trains the patch encoder (self-supervised, labelled synthetic) and the MIL on the
stored slides; the attention fusion trains with the histology modality (on other patients, and refuses to test
on the MIL's training patients); the node, now with weights, re-runs the jobs: an attention heatmap SEG and a
histology SR per slide arrive at the PACS, validated, and the SR carries the patient's fusion result."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import yaml
from sqlalchemy import select

from common.states import JobState
from common.types import SLIDE_RESULTS, ClinicalVariables, PatientData
from immunode.cli import main as cli_main
from models.fusion import FusionSettings
from models.serving import load_histology_encoder, load_histology_mil
from pipelines.histology.analysis import analyse_slide
from pipelines.histology.pipeline import slide_record
from pipelines.histology.settings import HistologySettings
from pipelines.omics.response import model_identity, predict_response
from pipelines.omics.settings import ResponseModelSettings
from research.errors import CohortError
from research.fusion import FusionRow, fusion_cohort_data, train_fusion_model
from storage.records import read_records
from storage.schema import Job
from tests.conftest import StoreSCP, dciodvfy_errors, storescu, wait_until
from tests.sr_content import sr_numbers, sr_texts
from tests.synthetic_slides import write_slide

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi_cmu1_small"
MIL_PATIENTS = 6
FUSION_PATIENTS = 20
RULES = [{"name": "histology", "pipeline": "histology", "series": {"modality": "SM"}}]


def _jobs(node) -> list[Job]:
    with node.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def _write_config(path: Path, settings) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


@pytest.mark.slow
def test_slides_are_stored_trained_on_analysed_and_fused(
    tmp_path: Path, make_settings, start_node, pacs: StoreSCP, torch_threads_restored
) -> None:
    import torch

    torch.set_num_threads(1)
    sections = {
        "routing": {"rules": RULES, "study_stable_s": 0.5, "poll_interval_s": 0.2},
        "workers": {"processes": 2, "job_cpu_limit_s": 300},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
    }
    settings = make_settings(**sections)
    slides = [
        write_slide(tmp_path / "scanner" / f"p{i}", f"HIST-{i}", infiltrated=i % 2 == 0, seed=i, size=1280)
        for i in range(MIL_PATIENTS)
    ]
    real = sorted(REAL.glob("*.dcm"))
    assert len(real) == 12, "../shared/data/wsi_cmu1_small is needed"

    # 1. Received and stored; without weights each job fails saying what to do.
    node = start_node(settings)
    for slide in slides:
        assert storescu(node.port, list(slide.files), extra=["-R", "-xy"]).returncode == 0
    assert storescu(node.port, real, extra=["-R", "-xy"]).returncode == 0
    failed = wait_until(
        lambda: (
            (jobs := _jobs(node))
            and len(jobs) == MIL_PATIENTS + 1
            and all(j.state is JobState.FAILED for j in jobs)
            and jobs
        ),
        180,
    )
    assert all("no histology weights configured" in job.error for job in failed)
    node.stop()

    # 2. The histology arm trained on the stored slides (labels from the cohort file).
    cohort = tmp_path / "histology-cohort.csv"
    with cohort.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["PatientID", "response"])
        writer.writerows([s.patient_id, "PR" if s.infiltrated else "PD"] for s in slides)
    config = _write_config(tmp_path / "config.yaml", settings)
    out = tmp_path / "histology-model"
    train = ["train", "histology", "--cohort", str(cohort), "--out", str(out), "--base-width", "4"]
    train += ["--encoder-epochs", "1", "--ssl-patches", "8", "--mil-epochs", "20", "--mil-dim", "32"]
    train += ["--attention-dim", "16", "--synthetic"]
    assert cli_main(["--config", str(config)] + train) == 0
    report = (out / "report.md").read_text()
    assert "not ImageNet" in report.replace("NOT ImageNet", "not ImageNet") and "Gated-attention MIL" in report
    encoder, encoder_card = load_histology_encoder(out / "histology-encoder.pt")
    mil, mil_card = load_histology_mil(out / "histology-mil.pt")
    assert encoder_card.synthetic_training_data and "NOT ImageNet" in encoder_card.training_data
    assert mil_card.parameters["encoder_sha256"] == encoder_card.sha256

    # 3. The fusion with the histology modality, on other patients (their slides analysed in-process).
    rng = np.random.default_rng(5)
    patients, rows = {}, []
    histology = HistologySettings()
    for i in range(MIL_PATIENTS, MIL_PATIENTS + FUSION_PATIENTS):
        slide = write_slide(tmp_path / "fusion" / f"p{i}", f"HIST-{i}", infiltrated=i % 2 == 0, seed=i, size=1024)
        analysed = analyse_slide(
            slide.series_instance_uid,
            slide.files,
            histology,
            encoder,
            model_identity(encoder_card),
            mil,
            model_identity(mil_card),
        )
        clinical = ClinicalVariables(slide.patient_id, age_years=float(rng.integers(40, 80)), sex="F", ecog=1)
        patients[(slide.patient_id, "")] = PatientData(slide.patient_id, "", None, clinical, (), slide_record(analysed))
        rows.append(FusionRow(slide.patient_id, "", "PR" if slide.infiltrated else "PD"))
    fusion_cohort = fusion_cohort_data(rows, patients, {}, None, 32, out / "histology-mil.pt")
    assert fusion_cohort.histology_model == model_identity(mil_card).key
    assert fusion_cohort.data.present[:, 0].all()  # histology for every patient
    with pytest.raises(CohortError, match="histology"):  # the MIL's training patients are never fusion test patients
        fusion_data_leaking = dataclasses.replace(fusion_cohort, mil_patients=frozenset(fusion_cohort.keys))
        train_fusion_model(fusion_data_leaking, tmp_path / "leak", FusionSettings(epochs=5), 10, "f", "1", "", True)
    with pytest.raises(CohortError, match="weights are needed"):  # leakage cannot be checked without the MIL card
        fusion_cohort_data(rows, patients, {}, None, 32, None)
    fusion_out = tmp_path / "fusion-model"
    result = train_fusion_model(
        fusion_cohort, fusion_out, FusionSettings(epochs=80), 50, "immunode-attention-fusion", "1.0.0", "", True
    )
    assert "histology-only" in result.test_metrics and "attention" in result.test_metrics
    assert "not ImageNet weights" in result.report.read_text()
    served = predict_response(
        patients[("HIST-6", "")],
        None,
        None,
        ResponseModelSettings(fusion_weights=fusion_out / "fusion.pt"),
    )
    assert served.fusion_probability is not None and dict(served.fusion_weights)["histology"] > 0

    # 4. The node with the weights re-runs the slides' jobs: heatmap SEG and SR per slide at the PACS.
    settings = make_settings(
        **sections,
        pipelines={
            "histology": {
                "encoder_weights": str(out / "histology-encoder.pt"),
                "mil_weights": str(out / "histology-mil.pt"),
            },
            "response": {"fusion_weights": str(fusion_out / "fusion.pt")},
        },
    )
    config = _write_config(tmp_path / "config-weights.yaml", settings)
    node = start_node(settings)
    retry = ["retry"] + [arg for job in failed for arg in ("--job", str(job.id))]
    assert cli_main(["--config", str(config)] + retry) == 0
    wait_until(lambda: all(j.state is JobState.SUCCEEDED for j in _jobs(node)), 300)
    received = wait_until(lambda: len(pacs.received()) >= 2 * (MIL_PATIENTS + 1) and pacs.received(), 120)
    segs = [hd.seg.segread(path) for path in received if _is_seg(path)]
    reports = [hd.sr.srread(path) for path in received if not _is_seg(path)]
    assert len(segs) == len(reports) == MIL_PATIENTS + 1
    for seg in segs:
        assert seg.SegmentationType == "FRACTIONAL" and len(seg.SegmentSequence) == 1
        assert seg.DimensionOrganizationType in ("TILED_SPARSE", "TILED_FULL")
    assert all(dciodvfy_errors(path) == [] for path in received)
    _read_alike_by_dcmjs(received)
    for sr in reports:
        numbers = sr_numbers(sr.ContentSequence)
        (probability,) = numbers["ICI response probability, histology MIL (slide alone)"]
        assert 0.0 <= probability <= 1.0
        assert numbers["Number of tissue patches analysed"][0] >= 1
        text = sr_texts(sr.ContentSequence)
        assert "not ImageNet weights" in text and "SYNTHETIC" in text
        assert "Histology modality: the whole-slide image's gated-attention MIL embedding" in text
        assert numbers["Fusion modality weight, histology"] == [pytest.approx(1.0)]  # no other modality here
    real_report = next(sr for sr in reports if sr.StudyInstanceUID == _study_of(real[0]))
    assert "0.499 um/pixel" in sr_texts(real_report.ContentSequence)  # the level nearest 0.5, stated
    with node.database.session() as session:
        stored = read_records(session, SLIDE_RESULTS)
    assert len(stored) == MIL_PATIENTS + 1 and all(len(s.embedding) == 32 for s in stored)


def _read_alike_by_dcmjs(paths: list[Path]) -> None:
    """dcmjs (OHIF's DICOM library, in Node) reads the heatmaps' frames and the reports' numbers as pydicom does."""
    import numpy as np
    import pydicom

    from tests.viewers import dcmjs_numbers, read_with_dcmjs

    for found, path in zip(read_with_dcmjs(paths), paths, strict=True):
        ds = pydicom.dcmread(path)
        if ds.Modality == "SEG":
            pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
            assert len(found["frames"]) == len(pixels)
            for frame, expected in zip(found["frames"], pixels, strict=True):
                read = np.frombuffer(frame["pixels"].encode(), np.uint8).reshape(expected.shape) - ord("0")
                assert np.array_equal(read > 0, expected > 0), path
        else:
            expected = sorted(v for values in sr_numbers(ds.ContentSequence).values() for v in values)
            assert sorted(dcmjs_numbers(found["content"])) == pytest.approx(expected)


def _is_seg(path: Path) -> bool:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG"


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
