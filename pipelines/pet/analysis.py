"""The `pet_quant` pipeline: SUV volume of a PET series, FDG-avid lesions, their measurements.

Lesion delineation implements the adaptive threshold of the FDG-PET immune-profiling (CytAct) method,
T = β·I70 + I_background (see `pipelines.pet.lesions`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.errors import ModelError
from pipelines.imaging.annotations import ReaderAnnotations, reader_annotations
from pipelines.imaging.geometry import patient_to_index
from pipelines.imaging.settings import AnnotationSettings
from pipelines.pet.anatomy import anatomy_for
from pipelines.pet.cytact import lesion_cytact
from pipelines.pet.lesions import detect_lesions, segment_lesions, segment_reader_regions, with_organ_node_rule
from pipelines.pet.settings import PetQuantSettings
from pipelines.pet.types import Lesion, PetQuantResult, PetVolume
from pipelines.pet.volume import load_pet_volume
from pipelines.types import AlgorithmIdentity

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "immunode-pet-lesions"


def algorithm_identity(params: PetQuantSettings) -> AlgorithmIdentity:
    # No trained weights: the identity hash covers the parameters that produced the result.
    return AlgorithmIdentity.of(ALGORITHM_NAME, params.model_dump(mode="json"))


def _reader_lesions(
    volume: PetVolume, reader: ReaderAnnotations, params: PetQuantSettings, ct_hu: np.ndarray | None
) -> tuple[Lesion, ...]:
    """Semi-automatic mode: the method inside each reader's region, then the point marks not inside one."""
    lesions = list(segment_reader_regions(volume, reader.regions, params))
    covered = np.zeros(volume.suv.shape, dtype=bool)
    for region in reader.regions:
        covered |= region.mask
    points = []
    for seed in reader.seeds:
        index = np.round(patient_to_index(volume.geometry, np.asarray([seed.position_mm]))[0]).astype(int)
        inside = np.all(index >= 0) and np.all(index < covered.shape) and covered[tuple(index)]
        if not inside:
            points.append(seed)
    if points:
        for lesion in segment_lesions(volume, params, points, ct_hu):
            number = len(lesions) + 1
            lesions.append(dataclasses.replace(lesion, number=number, tracking_identifier=f"Lesion {number}"))
    return tuple(lesions)


def analyse_pet_series(
    paths: Sequence[Path],
    params: PetQuantSettings,
    annotations: Sequence[Path] = (),
    images: dict | None = None,
    ct_paths: Sequence[Path] = (),
    annotation_settings: AnnotationSettings | None = None,
) -> PetQuantResult:
    """SUV volume, lesions and measurements. With reader annotations (SEG, RTSTRUCT, SR) in the PET's frame
    of reference, they define the lesions (semi-automatic mode: the threshold inside a reader's region, or
    around a reader's point); otherwise automatic detection."""
    volume = load_pet_volume(paths)
    reader = ReaderAnnotations((), (), ())
    if annotations:
        reader = reader_annotations(
            annotations,
            volume.geometry,
            volume.frame_of_reference_uid,
            images or {},
            annotation_settings or AnnotationSettings(),
        )
    anatomy = anatomy_for(volume, ct_paths)
    ct_hu = anatomy.ct_hu if anatomy else None
    notes: tuple[str, ...] = ()
    if reader.count:
        lesions = _reader_lesions(volume, reader, params, ct_hu)
    else:
        detection = detect_lesions(volume, params, ct_hu)
        lesions, notes = detection.lesions, detection.notes(params)
    if anatomy is not None:
        lesions = tuple(
            dataclasses.replace(lesion, location=anatomy.location(lesion.measurements.centroid_mm))
            for lesion in lesions
        )
    # A lesion whose organ is a lymph node is judged by its short axis (RECIST 1.1 nodes), automatic ones too.
    lesions = tuple(with_organ_node_rule(lesion, lesion.location, volume.geometry) for lesion in lesions)
    cytact, not_computed, cytact_model = None, "", None
    if not params.cytact.enabled:
        not_computed = "disabled in the configuration (pipelines.pet_quant.cytact.enabled)"
    elif not lesions:
        not_computed = "no lesion"
    else:
        try:
            prediction = lesion_cytact(volume, lesions, params.cytact)
            lesions, cytact, not_computed, cytact_model = (
                prediction.lesions,
                prediction.summary,
                prediction.not_computed,
                prediction.model,
            )
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
        cytact_model=cytact_model,
        reader_seeds=reader.count,
        annotations_left_out=reader.left_out,
        detection_notes=notes,
    )


def summarise(result: PetQuantResult) -> str:
    conversion = result.volume.conversion
    parts = [f"{len(result.lesions)} FDG-avid lesion(s) on PET series {result.volume.series_instance_uid}"]
    parts[0] += (
        f", defined by {result.reader_seeds} reader annotation(s) (semi-automatic)."
        if result.reader_seeds
        else ", detected automatically."
    )
    parts += list(result.detection_notes)
    if result.annotations_left_out:
        parts.append(f"Reader annotations not used as lesions: {'; '.join(result.annotations_left_out)}.")
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
