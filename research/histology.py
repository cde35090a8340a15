"""Training the histology arm (`immunode train histology`): the ResNet-50 patch encoder, self-supervised on the
cohort's stored slides (unless an encoder is given), then the gated-attention MIL pooling on the patients'
response labels; both saved with cards, and a report with the MIL's held-out AUC.

Recipe (documented in docs/methods/histology.md): patches as the pipeline reads them (tissue detection, 256 x 256 at the
level nearest 0.5 µm/pixel, stain normalisation); SimCLR on up to `ssl_patches_per_slide` patches of every
slide; features of every slide's patches (at most `max_patches`); the MIL trained on a stratified 80 % of the
patients and tested on the other 20 %, then retrained on all of them for the saved weights. The MIL card lists
its training patients: the fusion refuses to test on them (their slide embeddings were fitted to their labels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.cards import ModelCard, save_weights, sha256_file
from models.histology import (
    EncoderSettings,
    MilSettings,
    ResNetEncoder,
    embed_slide,
    parameter_count,
    train_encoder,
    train_mil,
)
from models.metrics import classification_metrics
from models.serving import load_histology_encoder
from pipelines.histology import slide as wsi
from pipelines.histology import stain
from pipelines.histology.analysis import patch_features
from pipelines.histology.settings import HistologySettings
from research.errors import CohortError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSlide:
    patient_id: str
    issuer_of_patient_id: str
    series_instance_uid: str
    paths: tuple[Path, ...]
    label: int  # 1 = responder


@dataclass(frozen=True)
class HistologyTrainingResult:
    encoder: ModelCard
    encoder_weights: Path
    mil: ModelCard
    mil_weights: Path
    test_auc: float | None
    report: Path


def _ssl_patches(slides: Sequence[LabelledSlide], settings: HistologySettings, per_slide: int) -> np.ndarray:
    """Stain-normalised tissue patches, evenly over each slide, for self-supervised training."""
    found = []
    for slide in slides:
        with wsi.open_slide(slide.paths) as opened:
            _, grid = wsi.tissue_patches(opened, settings)
            rows = np.linspace(0, len(grid.origins) - 1, min(per_slide, len(grid.origins))).round().astype(int)
            patches = np.stack([wsi.read_patches(opened, grid, int(i), int(i) + 1)[0] for i in rows])
        found.append(stain.normalise(patches, stain.fit(patches, settings.stain_normalisation)))
    return np.concatenate(found)


def _features(slide: LabelledSlide, settings: HistologySettings, encoder: ResNetEncoder) -> np.ndarray:
    with wsi.open_slide(slide.paths) as opened:
        _, grid = wsi.tissue_patches(opened, settings)
        features, _ = patch_features(opened, grid, settings, encoder)
    return features


def _split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    if min(np.bincount(labels, minlength=2)) < 2:
        raise CohortError("the MIL needs at least two responders and two non-responders with slides")
    return train_test_split(rows, test_size=0.2, stratify=labels, random_state=seed)


def train_histology(
    slides: Sequence[LabelledSlide],
    out: Path,
    settings: HistologySettings,
    encoder_settings: EncoderSettings,
    mil_settings: MilSettings,
    encoder_weights: Path | None,
    name: str,
    version: str,
    synthetic: bool,
    training_data: str,
    ssl_patches_per_slide: int = 64,
) -> HistologyTrainingResult:
    if len(slides) < 4:
        raise CohortError(f"{len(slides)} patients with slides and a response: at least 4 are needed")
    out.mkdir(parents=True, exist_ok=True)
    described = training_data or f"{len(slides)} whole-slide images of this node's store"
    if encoder_weights is None:
        patches = _ssl_patches(slides, settings, ssl_patches_per_slide)
        encoder, losses = train_encoder(patches, encoder_settings)
        encoder_card = save_weights(
            encoder.state_dict(),
            out / "histology-encoder.pt",
            ModelCard(
                f"{name}-encoder",
                version,
                synthetic,
                training_data=(
                    f"SimCLR self-supervised on {len(patches)} patches of {described}; NOT ImageNet weights"
                ),
                intended_use="Research use only: patch features of H&E whole-slide images for the histology arm.",
                metrics={"ssl_loss_per_epoch": losses, "parameters": parameter_count(encoder)},
                parameters={"encoder": asdict(encoder_settings), "stain_normalisation": settings.stain_normalisation},
            ),
        )
        encoder_path = out / "histology-encoder.pt"
    else:
        encoder, encoder_card = load_histology_encoder(encoder_weights)
        encoder_path = Path(encoder_weights)
    bags = [_features(slide, settings, encoder) for slide in slides]
    labels = np.array([slide.label for slide in slides])
    train, test = _split(labels, mil_settings.seed)
    held_out = train_mil([bags[i] for i in train], labels[train], mil_settings)
    probabilities = np.array([embed_slide(held_out, bags[i]).probability for i in test])
    metrics = classification_metrics(labels[test], probabilities) if len(np.unique(labels[test])) == 2 else {}
    final = train_mil(bags, labels, mil_settings)
    mil_card = save_weights(
        final.state_dict(),
        out / "histology-mil.pt",
        ModelCard(
            f"{name}-mil",
            version,
            synthetic,
            training_data=f"{described}: {len(slides)} patients, {int(labels.sum())} responders",
            intended_use="Research use only: slide embedding (fusion histology modality) and attention heatmap.",
            metrics={"held_out_20_percent": metrics, "patches_per_slide": [len(b) for b in bags]},
            parameters={
                "mil": asdict(mil_settings),
                "feature_dim": int(bags[0].shape[1]),
                "encoder_sha256": sha256_file(encoder_path),
                # The patients whose labels the pooling was fitted to: the fusion never tests on them.
                "training_patients": [[s.patient_id, s.issuer_of_patient_id] for s in slides],
            },
        ),
    )
    auc = metrics.get("roc_auc") if metrics else None
    report = out / "report.md"
    report.write_text(
        "\n".join(
            [
                "# Histology arm: training report (research use only)",
                "",
                f"{len(slides)} patients with a whole-slide image ({int(labels.sum())} responders).",
                f"Patch encoder: ResNet-50 (base width {encoder.stem[0].out_channels}, "
                f"{parameter_count(encoder):,} parameters), weights: {encoder_card.training_data}. "
                "The published method uses ImageNet-pretrained weights; these are not.",
                f"Patches {settings.patch_size} x {settings.patch_size} at the level nearest "
                f"{settings.microns_per_pixel} µm/pixel, stain normalisation {settings.stain_normalisation}; "
                f"{sum(len(b) for b in bags)} patches in all.",
                f"Gated-attention MIL (Ilse et al. 2018; M = {mil_settings.embedding_dim}, "
                f"L = {mil_settings.attention_dim}): held-out ROC AUC on {len(test)} patients: "
                + (f"{auc:.3f}" if auc is not None else "not computable (one class in the test split)")
                + "; the saved weights are retrained on all patients.",
            ]
        )
        + "\n"
    )
    return HistologyTrainingResult(encoder_card, encoder_path, mil_card, out / "histology-mil.pt", auc, report)
