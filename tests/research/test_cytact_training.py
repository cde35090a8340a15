"""`immunode train cytact --manifest`: lesions from PET series by seed or mask, weights with a card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from dicom_node.ingest import parse_received
from immunode.cli import main as cli_main
from models.cards import load_verified
from models.synthetic_lesions import cytact_function
from pipelines.imaging.geometry import to_sitk
from pipelines.petlesions.volume import load_pet_volume
from storage.database import Database
from storage.files import FileLayout
from storage.store import InstanceStore
from tests.synthetic import DEFAULT_LESIONS, write_study

pytestmark = pytest.mark.usefixtures("torch_threads_restored")


def test_manifest_with_seeds_and_a_mask_trains_weights_with_a_card(tmp_path: Path, capsys, make_settings) -> None:
    settings = make_settings()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    store = InstanceStore(Database(settings.database_url), FileLayout(settings.storage.root))
    rows = ["pet,seed_x,seed_y,seed_z,mask,cytact"]
    for index in range(2):
        study = write_study(tmp_path / f"s{index}", with_ct=False, shape_zyx=(70, 96, 96))
        # The first series is named by its folder, the second by its UID in the node's store.
        pet = f"s{index}/PT" if index == 0 else study.pet_series_uid
        if index == 1:
            for path in study.pet_files:
                data = path.read_bytes()
                store.store(parse_received(data), data, "STORESCU")
        for lesion in DEFAULT_LESIONS:
            x, y, z = lesion.centre_mm
            rows.append(f"{pet},{x + 2},{y},{z},,{cytact_function(lesion.suv, 0.0, 0.1):.4f}")
    store.database.dispose()
    # One lesion given as a NIfTI mask in the PET's frame instead of a seed.
    volume = load_pet_volume(list(study.pet_files))
    mask = np.zeros(volume.suv.shape, dtype=np.uint8)
    mask[volume.suv > 6] = 1
    sitk.WriteImage(to_sitk(mask, volume.geometry), str(tmp_path / "mask.nii.gz"))
    rows.append("s1/PT,,,,mask.nii.gz,0.5")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "weights"
    arguments = [
        "--config",
        str(config),
        "train",
        "cytact",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--copies",
        "1",
        "--folds",
        "3",
        "--version",
        "0.0.1-test",
    ]
    assert cli_main(arguments) == 0
    assert "pooled out-of-fold Spearman rho" in capsys.readouterr().out
    _, card = load_verified(out / "immunode-cytact-cnn-0.0.1-test.pt")
    assert card.metrics["lesions"] == 9 and card.metrics["cross_validation"].startswith("3-fold")
    assert card.synthetic_training_data is False


def test_manifest_row_without_uptake_names_its_row(tmp_path: Path, capsys) -> None:
    write_study(tmp_path / "s", with_ct=False, shape_zyx=(20, 48, 48), lesions=())
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("pet,seed_x,seed_y,seed_z,cytact\n" + "s/PT,0,-300,0,0.1\n" * 4)
    assert cli_main(["train", "cytact", "--manifest", str(manifest), "--out", str(tmp_path / "w")]) == 1
    assert "row 2" in capsys.readouterr().err


def test_external_validation_reports_spearman_per_lesion_and_patient(tmp_path: Path, make_settings, capsys) -> None:
    settings = make_settings()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    rows = ["pet,seed_x,seed_y,seed_z,cytact,patient"]
    for index in range(4):
        lesions = DEFAULT_LESIONS[index:] or DEFAULT_LESIONS[:1]
        write_study(tmp_path / f"p{index}", with_ct=False, shape_zyx=(70, 96, 96), lesions=lesions)
        for lesion in lesions:
            x, y, z = lesion.centre_mm
            rows.append(f"p{index}/PT,{x},{y},{z},{cytact_function(lesion.suv, 0.0, 0.1):.4f},P{index}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "validation"
    arguments = ["--config", str(config), "evaluate", "cytact", "--manifest", str(manifest), "--out", str(out)]
    assert cli_main(arguments) == 0
    printed = capsys.readouterr().out
    assert "lesions: Spearman rho" in printed and "patients: rho" in printed
    report = (out / "report.md").read_text()
    assert "| lesion | 10 |" in report and "| patient (mean of its lesions) | 4 |" in report
    assert "nan" not in report
    assert "SYNTHETIC DEMONSTRATION WEIGHTS" in report
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "predictions.csv").read_text().splitlines()) == 11
