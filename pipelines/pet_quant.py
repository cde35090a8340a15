"""The `pet_quant` pipeline: SUV volume of a PET series, FDG-avid lesions, their measurements.

Lesion delineation implements the adaptive threshold of the FDG-PET immune-profiling (CytAct) method,
T = β·I70 + I_background (see `pipelines.lesions`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from immunode import __version__
from immunode.config import PetQuantSettings
from models.errors import ModelError
from pipelines.anatomy import anatomy_for
from pipelines.annotations import annotation_seeds
from pipelines.cytact import lesion_cytact
from pipelines.lesions import segment_lesions
from pipelines.pet_volume import load_pet_volume
from pipelines.types import AlgorithmIdentity, PetQuantResult

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "immunode-pet-lesions"


def algorithm_identity(params: PetQuantSettings) -> AlgorithmIdentity:
    # No trained weights: the identity hash covers the parameters that produced the result.
    parameters = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return AlgorithmIdentity(
        name=ALGORITHM_NAME,
        version=__version__,
        parameters_sha256=hashlib.sha256(parameters.encode()).hexdigest(),
        parameters=parameters,
    )


def analyse_pet_series(
    paths: Sequence[Path],
    params: PetQuantSettings,
    annotations: Sequence[Path] = (),
    images: dict | None = None,
    ct_paths: Sequence[Path] = (),
) -> PetQuantResult:
    """SUV volume, lesions and measurements. With reader annotations (SEG, RTSTRUCT, SR) in the PET's frame
    of reference, their regions define the lesions (semi-automatic mode); otherwise automatic detection."""
    volume = load_pet_volume(paths)
    seeds = annotation_seeds(annotations, volume.frame_of_reference_uid, images or {}) if annotations else []
    anatomy = anatomy_for(volume, ct_paths)
    lesions = segment_lesions(volume, params, seeds or None, anatomy.ct_hu if anatomy else None)
    if anatomy is not None:
        lesions = tuple(
            dataclasses.replace(lesion, location=anatomy.location(lesion.measurements.centroid_mm))
            for lesion in lesions
        )
    cytact, not_computed = None, ""
    if not params.cytact.enabled:
        not_computed = "disabled in the configuration (pipelines.pet_quant.cytact.enabled)"
    elif not lesions:
        not_computed = "no lesion"
    else:
        try:
            lesions, cytact = lesion_cytact(volume, lesions, params.cytact)
        except ModelError as error:
            # The SUV results stand on their own; the report says why CytAct is missing.
            not_computed = str(error)
            logger.error("series %s: CytAct not computed: %s", volume.series_instance_uid, error)
    logger.info(
        "series %s: %d lesion(s) above SUV %.2f (%s)",
        volume.series_instance_uid,
        len(lesions),
        params.detection_suv_threshold,
        volume.conversion.method,
    )
    return PetQuantResult(
        volume=volume,
        lesions=lesions,
        parameters=algorithm_identity(params).parameters,
        cytact=cytact,
        cytact_not_computed=not_computed,
        reader_seeds=len(seeds),
    )


def summarise(result: PetQuantResult) -> str:
    conversion = result.volume.conversion
    parts = [f"{len(result.lesions)} FDG-avid lesion(s) on PET series {result.volume.series_instance_uid}"]
    parts[0] += (
        f", defined by {result.reader_seeds} reader annotation(s) (semi-automatic)."
        if result.reader_seeds
        else ", detected automatically."
    )
    parts.append(f"SUV conversion: {conversion.method}.")
    for lesion in result.lesions:
        m = lesion.measurements
        parts.append(
            f"{lesion.tracking_identifier}: SUVmax {m.suv_max:.2f}, SUVpeak {m.suv_peak:.2f}, "
            f"SUVmean {m.suv_mean:.2f}, "
            f"MTV {m.metabolic_volume_ml:.2f} ml, TLG {m.total_lesion_glycolysis:.2f} g, "
            f"long axis {m.long_axis_mm:.1f} mm, short axis {m.short_axis_mm:.1f} mm"
            f"{' (RECIST target size)' if m.recist_target else ''}"
            f"{', ' + lesion.location if lesion.location else ''} "
            f"(T = {m.threshold_suv:.2f}: 0.3 x I70 {m.i70_suv:.2f} + background {m.background_suv:.2f})."
        )
    return " ".join(parts)
