"""Lesion CytAct and patient-level biomarkers, after the FDG-PET immune-profiling method: a 3D CNN
predicts each lesion's cytolytic activity score; the patient summary over the RECIST 1.1 target lesions is
the minimum (the representative value: a low minimum and a high variance go with poorer outcome under
immune checkpoint inhibitors), mean, maximum and, with two or more lesions, the variance. The method's
low/high cut-offs are applied only for the weights they were derived for."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np

from models.cytact import lesion_cube, predict_with_embeddings
from models.device import select_device
from models.serving import load_cytact
from pipelines.pet.settings import CytActSettings
from pipelines.pet.types import CytActPrediction, CytActSummary
from pipelines.petlesions.types import Lesion, PetVolume
from pipelines.types import ModelIdentity

logger = logging.getLogger(__name__)

RECIST_TARGETS = (
    "RECIST 1.1 target lesions: long axis >= 10 mm (lymph nodes named by a reader: short axis >= 15 mm) over at "
    "least three PET voxels, the largest first, at most {total} in all and {per_organ} per organ (the organ from "
    "the reader's finding site or name, else from the CT: lung, bone; all lymph nodes one organ; lesions of "
    "unknown organ counted together as one organ)"
)


def summary_lesions(lesions: tuple[Lesion, ...], settings: CytActSettings) -> tuple[tuple[Lesion, ...], str]:
    """The lesions the patient summary is over, and how they were chosen."""
    if settings.summary_lesions == "all":
        return lesions, "all lesions (configured; the method uses the RECIST target lesions)"
    measurable = [lesion for lesion in lesions if lesion.measurements.recist_target]
    measurable.sort(
        key=lambda x: (
            -(x.measurements.short_axis_mm if x.measurements.lymph_node else x.measurements.long_axis_mm),
            x.number,
        )
    )
    chosen: list[Lesion] = []
    per_organ: Counter[str] = Counter()
    for lesion in measurable:
        if len(chosen) == settings.max_targets:
            break
        # Unknown organs ("") share one count: two lesions of unknown organ may lie in one organ.
        if per_organ[lesion.organ] == settings.max_targets_per_organ:
            continue
        per_organ[lesion.organ] += 1
        chosen.append(lesion)
    rule = RECIST_TARGETS.format(total=settings.max_targets, per_organ=settings.max_targets_per_organ)
    return tuple(sorted(chosen, key=lambda x: x.number)), rule


def _cutoffs_apply(model: ModelIdentity, settings: CytActSettings) -> str:
    """Why the cut-offs do not apply to these weights ("" when they do)."""
    if settings.cutoffs_weights_sha256 == model.weights_sha256:
        return ""
    site = (
        f", the site's variance cut-off {settings.heterogeneity_variance_cutoff}"
        if settings.heterogeneity_variance_cutoff is not None
        else ""
    )
    return (
        f"no low/high group: the cut-offs (minimum {settings.low_group_cutoff}{site}) belong to other weights "
        "(pipelines.pet_quant.cytact.cutoffs_weights_sha256), not to these"
    )


def lesion_cytact(
    volume: PetVolume, lesions: tuple[Lesion, ...], settings: CytActSettings, device: str = "auto"
) -> CytActPrediction:
    """Every lesion's CytAct and the patient summary over the summary lesions, the network on `device`
    (`pipelines.compute.device`). Raises models.errors.ModelError."""
    chosen_device = select_device(device)
    model, card = load_cytact(settings.weights, chosen_device.torch_device)
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
    predicted, embeddings = predict_with_embeddings(model, cubes)
    scored = tuple(
        dataclasses.replace(lesion, cytact=float(score), embedding=tuple(float(v) for v in embedding))
        for lesion, score, embedding in zip(lesions, predicted, embeddings)
    )
    identity = ModelIdentity(card.name, card.version, card.sha256, card.synthetic_training_data)
    chosen, selection = summary_lesions(scored, settings)
    if not chosen:
        return CytActPrediction(
            scored, identity, None, f"no lesion meets the rule of the patient summary ({selection})"
        )
    scores = np.array([lesion.cytact for lesion in chosen])
    not_given = _cutoffs_apply(identity, settings)
    variance = float(np.var(scores, ddof=1)) if len(scores) >= 2 else None
    summary = CytActSummary(
        model=identity,
        lesions=tuple(lesion.number for lesion in chosen),
        selection=selection,
        minimum=float(scores.min()),
        mean=float(scores.mean()),
        maximum=float(scores.max()),
        variance=variance,
        low_group=None if not_given else bool(scores.min() < settings.low_group_cutoff),
        low_group_cutoff=settings.low_group_cutoff,
        heterogeneous=(
            None
            if not_given or variance is None or settings.heterogeneity_variance_cutoff is None
            else variance > settings.heterogeneity_variance_cutoff
        ),
        heterogeneity_cutoff=settings.heterogeneity_variance_cutoff,
        groups_not_given=not_given,
    )
    logger.info(
        "series %s: CytAct min %.3f over %d of %d lesion(s) (%s %s, on %s)",
        volume.series_instance_uid,
        summary.minimum,
        len(chosen),
        len(scored),
        card.name,
        card.version,
        chosen_device.description,
    )
    return CytActPrediction(scored, identity, summary)
