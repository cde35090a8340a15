"""Lesion CytAct and patient-level biomarkers, after the FDG-PET immune-profiling method: a 3D CNN
predicts each lesion's cytolytic activity score; the patient summary is the minimum (the representative
value: low minimum and high variance go with poorer outcome under immune checkpoint inhibitors), mean,
maximum and, with two or more lesions, the variance."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from models.cytact import lesion_cube, predict_with_embeddings
from models.serving import load_cytact
from pipelines.pet.settings import CytActSettings
from pipelines.pet.types import CytActSummary, Lesion, PetVolume
from pipelines.types import ModelIdentity

logger = logging.getLogger(__name__)


def lesion_cytact(
    volume: PetVolume, lesions: tuple[Lesion, ...], settings: CytActSettings
) -> tuple[tuple[Lesion, ...], CytActSummary]:
    """Lesions with their predicted CytAct, and the patient summary. Raises models.errors.ModelError."""
    model, card = load_cytact(settings.weights)
    spacing_zyx = tuple(volume.geometry.spacing_mm[::-1])
    cubes = np.stack(
        [
            lesion_cube(
                volume.suv,
                spacing_zyx,  # type: ignore[arg-type]
                np.asarray(lesion.offset) + np.argwhere(lesion.mask).mean(axis=0),
                lesion.mask,
                lesion.offset,
            )
            for lesion in lesions
        ]
    )
    scores, embeddings = predict_with_embeddings(model, cubes)
    scored = tuple(
        dataclasses.replace(lesion, cytact=float(score), embedding=tuple(float(v) for v in embedding))
        for lesion, score, embedding in zip(lesions, scores, embeddings)
    )
    variance = float(np.var(scores, ddof=1)) if len(scores) >= 2 else None
    summary = CytActSummary(
        model=ModelIdentity(card.name, card.version, card.sha256, card.synthetic_training_data),
        minimum=float(scores.min()),
        mean=float(scores.mean()),
        maximum=float(scores.max()),
        variance=variance,
        low_group=bool(scores.min() < settings.low_group_cutoff),
        low_group_cutoff=settings.low_group_cutoff,
        heterogeneous=None if variance is None else variance > settings.heterogeneity_variance_cutoff,
        heterogeneity_cutoff=settings.heterogeneity_variance_cutoff,
    )
    logger.info(
        "series %s: CytAct min %.3f over %d lesion(s) (%s %s)",
        volume.series_instance_uid,
        summary.minimum,
        len(scored),
        card.name,
        card.version,
    )
    return scored, summary
