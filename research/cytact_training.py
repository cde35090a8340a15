"""`immunode train cytact --manifest FILE`: lesion cubes from PET series named in a manifest, then the
CytAct network's cross-validation and final training (models.training), weights saved with a model card.

Manifest (CSV): `pet` (a folder holding one PET series, relative to the manifest, or the Series Instance
UID of a PET series in the node's store), the
lesion as a seed `seed_x,seed_y,seed_z` (patient mm; segmented with the adaptive threshold) or a `mask`
(NIfTI in the PET's frame), and the target `cytact` (e.g. from `immunode cytact-from-expression`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from models.cards import ModelCard, save_weights
from models.cytact import lesion_cube
from models.training import TrainingSettings, cross_validate, deterministic_torch, train_model
from pipelines.errors import PipelineError
from pipelines.imaging.geometry import to_sitk
from pipelines.pet.lesions import segment_lesions
from pipelines.pet.settings import PetQuantSettings
from pipelines.pet.volume import load_pet_volume
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
    rows = list(csv.DictReader(manifest.open(newline="", encoding="utf-8-sig")))
    cubes, targets, volumes = [], [], {}
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
    if len(cubes) < 4:
        raise ManifestError(f"{manifest}: at least 4 lesions are needed, found {len(cubes)}")
    return np.stack(cubes), np.asarray(targets, dtype=np.float32)


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
