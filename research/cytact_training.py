"""`immunode train cytact --manifest FILE`: lesion cubes from PET series named in a manifest, then the
CytAct network's cross-validation and final training (models.training), weights saved with a model card.
`immunode evaluate cytact --manifest FILE`: external validation as in the method, the Spearman correlation of
predicted and RNA-derived CytAct per lesion and per patient, with a report and a scatter plot.

Manifest (CSV): `pet` (a folder holding one PET series, relative to the manifest, or the Series Instance
UID of a PET series in the node's store), the
lesion as a seed `seed_x,seed_y,seed_z` (patient mm; segmented with the adaptive threshold) or a `mask`
(NIfTI in the PET's frame), the target `cytact` (e.g. from `immunode cytact-from-expression`) and, for the
per-patient validation, an optional `patient`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from models.cards import ModelCard, save_weights
from models.cytact import lesion_cube
from models.training import TrainingSettings, cross_validate, deterministic_torch, train_model
from pipelines.errors import PipelineError
from pipelines.imaging.geometry import to_sitk
from pipelines.pet.settings import PetQuantSettings
from pipelines.petlesions.lesions import segment_lesions
from pipelines.petlesions.volume import load_pet_volume
from pipelines.types import ReaderSeed
from research.errors import ManifestError

logger = logging.getLogger(__name__)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _series_files(value: str, manifest: Path, stored_series: Callable[[str], list[Path]] | None) -> list[Path]:
    folder = (manifest.parent / value).resolve()
    if folder.is_dir():
        return _dicom_files(folder)
    files = stored_series(value) if stored_series is not None else []
    if not files:
        raise PipelineError(f"{value!r} is neither a folder nor a series in the node's store")
    return files


def manifest_cubes(
    manifest: Path, params: PetQuantSettings, stored_series: Callable[[str], list[Path]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cubes and targets of the manifest's lesions; `stored_series` finds a Series Instance UID's files."""
    lesions = manifest_lesions(manifest, params, stored_series)
    return lesions.cubes, lesions.targets


@dataclass(frozen=True, eq=False)
class ManifestLesions:
    cubes: np.ndarray
    targets: np.ndarray
    patients: tuple[str, ...]  # the `patient` column, "" where absent


def manifest_lesions(
    manifest: Path, params: PetQuantSettings, stored_series: Callable[[str], list[Path]] | None = None
) -> ManifestLesions:
    """The manifest's lesions as cubes, with their targets and patients."""
    rows = list(csv.DictReader(manifest.open(newline="", encoding="utf-8-sig")))
    cubes, targets, patients, volumes = [], [], [], {}
    for number, row in enumerate(rows, start=2):
        try:
            target = float(row["cytact"])
            if row["pet"] not in volumes:
                volumes[row["pet"]] = load_pet_volume(_series_files(row["pet"], manifest, stored_series))
            volume = volumes[row["pet"]]
            spacing_zyx = tuple(volume.geometry.spacing_mm[::-1])
            if row.get("mask"):
                mask_image = sitk.ReadImage(str(manifest.parent / row["mask"]))
                reference = to_sitk(volume.suv, volume.geometry)
                resampled = sitk.Resample(mask_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                mask = sitk.GetArrayFromImage(resampled) > 0
                if not mask.any():
                    raise ManifestError(f"{manifest} row {number}: the mask is empty on the PET grid")
                cube = lesion_cube(volume.suv, spacing_zyx, np.argwhere(mask).mean(axis=0), mask, (0, 0, 0))
            else:
                seed = [float(row[k]) for k in ("seed_x", "seed_y", "seed_z")]
                lesions = segment_lesions(volume, params, [ReaderSeed(tuple(seed))])  # type: ignore[arg-type]
                if not lesions:
                    raise ManifestError(f"{manifest} row {number}: no uptake found at the seed {seed}")
                lesion = lesions[0]
                centre = np.asarray(lesion.offset) + np.argwhere(lesion.mask).mean(axis=0)
                cube = lesion_cube(volume.suv, spacing_zyx, centre, lesion.mask, lesion.offset)
        except (KeyError, ValueError) as error:
            raise ManifestError(f"{manifest} row {number}: missing or invalid value ({error})") from None
        except PipelineError as error:
            raise ManifestError(f"{manifest} row {number}: {error}") from None
        cubes.append(cube)
        targets.append(target)
        patients.append((row.get("patient") or "").strip())
    if len(cubes) < 4:
        raise ManifestError(f"{manifest}: at least 4 lesions are needed, found {len(cubes)}")
    return ManifestLesions(np.stack(cubes), np.asarray(targets, dtype=np.float32), tuple(patients))


def train_from_manifest(
    manifest: Path,
    out: Path,
    params: PetQuantSettings,
    settings: TrainingSettings,
    name: str,
    version: str,
    training_data: str,
    synthetic: bool,
    stored_series: Callable[[str], list[Path]] | None = None,
) -> ModelCard:
    deterministic_torch()
    cubes, targets = manifest_cubes(manifest, params, stored_series)
    folds = min(settings.folds, len(targets))
    validation = cross_validate(cubes, targets, replace(settings, folds=folds))
    model = train_model(cubes, targets, settings, settings.seed)
    card = ModelCard(
        name,
        version,
        synthetic,
        training_data=training_data or f"{len(targets)} lesions from {manifest.name}",
        intended_use="Research use only.",
        metrics={
            "cross_validation": f"{folds}-fold, pooled out-of-fold predictions",
            "spearman_rho": round(validation.spearman_rho, 4),
            "spearman_p": validation.spearman_p,
            "lesions": len(targets),
        },
        parameters={**settings.as_dict(), "folds": folds},
    )
    return save_weights(model.state_dict(), out / f"{name}-{version}.pt", card)


@dataclass(frozen=True)
class ExternalValidation:
    lesions: int
    lesion_rho: float
    lesion_p: float
    patients: int
    patient_rho: float | None
    patient_p: float | None
    report: Path


def evaluate_cytact(
    manifest: Path,
    weights: Path | None,
    params: PetQuantSettings,
    out: Path,
    stored_series: Callable[[str], list[Path]] | None = None,
) -> ExternalValidation:
    """Predicted vs RNA-derived CytAct of the manifest's lesions (Spearman), and per patient (the mean of each
    patient's lesions, when the manifest names patients); report.md, predictions.csv and scatter.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr

    from models.cytact import predict
    from models.serving import load_cytact

    lesions = manifest_lesions(manifest, params, stored_series)
    model, card = load_cytact(weights)
    predicted = predict(model, lesions.cubes)
    lesion = spearmanr(predicted, lesions.targets)
    by_patient: dict[str, list[int]] = {}
    for index, patient in enumerate(lesions.patients):
        if patient:
            by_patient.setdefault(patient, []).append(index)
    patient_rho = patient_p = None
    if len(by_patient) >= 3:
        means = [(float(predicted[i].mean()), float(lesions.targets[i].mean())) for i in map(list, by_patient.values())]
        patient = spearmanr([m[0] for m in means], [m[1] for m in means])
        patient_rho, patient_p = float(patient.statistic), float(patient.pvalue)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.csv").open("w") as handle:
        handle.write("row,patient,cytact_rna,cytact_predicted\n")
        for row, (who, target, value) in enumerate(zip(lesions.patients, lesions.targets, predicted), start=2):
            handle.write(f"{row},{who},{target:.6f},{value:.6f}\n")
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.scatter(lesions.targets, predicted, s=12)
    axis.set_xlabel("CytAct from RNA")
    axis.set_ylabel("CytAct predicted from PET")
    axis.set_title(f"Spearman rho {lesion.statistic:.2f} ({len(predicted)} lesions)")
    figure.tight_layout()
    figure.savefig(out / "scatter.png", dpi=120)
    plt.close(figure)
    synthetic = " SYNTHETIC DEMONSTRATION WEIGHTS: no biological meaning." if card.synthetic_training_data else ""
    lines = [
        "# CytAct network: external validation",
        "",
        f"RESEARCH USE ONLY. Weights {card.name} {card.version} (sha256 {card.sha256}).{synthetic}",
        f"Manifest {manifest.name}: {len(predicted)} lesions. Predicted vs RNA-derived CytAct, Spearman.",
        "",
        "| level | n | rho | p |",
        "|---|---|---|---|",
        f"| lesion | {len(predicted)} | {lesion.statistic:.3f} | {lesion.pvalue:.3g} |",
    ]
    if patient_rho is not None:
        lines.append(f"| patient (mean of its lesions) | {len(by_patient)} | {patient_rho:.3f} | {patient_p:.3g} |")
    else:
        lines.append("| patient | | | needs a `patient` column naming at least 3 patients |")
    lines += ["", "Files: predictions.csv, scatter.png.", ""]
    (out / "report.md").write_text("\n".join(lines))
    return ExternalValidation(
        len(predicted),
        float(lesion.statistic),
        float(lesion.pvalue),
        len(by_patient),
        patient_rho,
        patient_p,
        out / "report.md",
    )
