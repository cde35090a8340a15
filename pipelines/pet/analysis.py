"""The `pet_quant` pipeline: SUV volume of a PET series, FDG-avid lesions, their measurements.

Lesion delineation implements the adaptive threshold of the FDG-PET immune-profiling (CytAct) method,
T = β·I70 + I_background (see `pipelines.petlesions.lesions`).
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
from pipelines.imaging.organs import reader_organ
from pipelines.imaging.settings import AnnotationSettings
from pipelines.pet.cytact import lesion_cytact
from pipelines.pet.settings import PetQuantSettings
from pipelines.pet.types import PetQuantResult
from pipelines.petlesions.anatomy import AnatomyMap, Site, anatomy_for
from pipelines.petlesions.lesions import detect_lesions, segment_lesions, segment_reader_regions, with_organ_node_rule
from pipelines.petlesions.types import Lesion, PetVolume
from pipelines.petlesions.volume import load_pet_volume
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
        positions = np.asarray([seed.position_mm for seed in points])
        for lesion in segment_lesions(volume, params, points, ct_hu):
            number = len(lesions) + 1
            # The seed a lesion grew from is the one nearest to it (each lies within the seed search radius).
            seed = points[int(np.argmin(np.linalg.norm(positions - lesion.measurements.centroid_mm, axis=1)))]
            organ, evidence = reader_organ(lesion.measurements.lymph_node, [seed.site_text])
            lesions.append(
                dataclasses.replace(
                    lesion, number=number, tracking_identifier=f"Lesion {number}", organ=organ, organ_evidence=evidence
                )
            )
    return tuple(lesions)


def _sited(lesion: Lesion, anatomy: AnatomyMap | None) -> Lesion:
    """The lesion with its anatomical site (from the CT, where it shows the evidence) and its organ (the reader's
    finding site or name, else the CT, else unknown), each with where it came from."""
    if anatomy is None:
        site = Site("", "no CT of the study in the PET's frame of reference")
    else:
        site = anatomy.site(lesion.measurements.centroid_mm)
    organ, evidence = lesion.organ, lesion.organ_evidence
    if not organ and lesion.sources:
        words = [s.finding_site for s in lesion.sources if s.finding_site] + [s.label for s in lesion.sources]
        organ, evidence = reader_organ(lesion.measurements.lymph_node, words)
    elif not organ and lesion.measurements.lymph_node:
        organ, evidence = reader_organ(True, [])
    if not organ and anatomy is not None:
        from_ct = anatomy.organ(lesion)
        organ, evidence = from_ct.name, from_ct.evidence
    return dataclasses.replace(
        lesion,
        location=site.name,
        location_evidence=site.evidence,
        organ=organ,
        organ_evidence=evidence or "unknown (no reader finding site, and no CT evidence)",
    )


def ranked_candidates(lesions: Sequence[Lesion]) -> tuple[Lesion, ...]:
    """Automatic lesions are candidates until a reader confirms them: "Candidate 1" is the most confident (the
    highest candidate score; without scores, the highest SUVmax), numbered in that order."""
    ranked = sorted(
        lesions,
        key=lambda lesion: (
            -(lesion.candidate_score if lesion.candidate_score is not None else float("-inf")),
            -lesion.measurements.suv_max,
            lesion.number,
        ),
    )
    return tuple(
        dataclasses.replace(lesion, number=rank, tracking_identifier=f"Candidate {rank}")
        for rank, lesion in enumerate(ranked, start=1)
    )


def candidate_statement(lesions: Sequence[Lesion], params: PetQuantSettings) -> str:
    """What automatic candidates are, in the words the report uses."""
    scored = any(lesion.candidate_score is not None for lesion in lesions)
    return (
        f"Automatic lesion candidates, not confirmed by a reader: {len(lesions)} candidate(s) found by "
        f"{ALGORITHM_NAME} (the device observer of this report), ranked by "
        + ("their candidate confidence score" if scored else "SUVmax (no candidate score computed)")
        + f", Candidate 1 the most confident; at most {params.max_lesions} reported "
        "(pipelines.pet_quant.max_lesions). A reader's SEG, RTSTRUCT or SR of this study sent to the node "
        "replaces them with reader-confirmed lesions in a new version of this report."
    )


def analyse_pet_series(
    paths: Sequence[Path],
    params: PetQuantSettings,
    annotations: Sequence[Path] = (),
    images: dict | None = None,
    ct_paths: Sequence[Path] = (),
    annotation_settings: AnnotationSettings | None = None,
    device: str = "auto",
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
            volume.series_instance_uid,
            "PT",
        )
    anatomy = anatomy_for(volume, ct_paths)
    ct_hu = anatomy.ct_hu if anatomy else None
    notes: tuple[str, ...] = ()
    if reader.count:
        lesions = _reader_lesions(volume, reader, params, ct_hu)
    else:
        detection = detect_lesions(volume, params, ct_hu, anatomy)
        lesions = ranked_candidates(detection.lesions)
        notes = (candidate_statement(lesions, params), *detection.notes(params))
    lesions = tuple(_sited(lesion, anatomy) for lesion in lesions)
    # A lesion whose organ is a lymph node is judged by its short axis (RECIST 1.1 nodes), automatic ones too.
    lesions = tuple(with_organ_node_rule(lesion, lesion.organ, volume.geometry) for lesion in lesions)
    cytact, not_computed, cytact_model = None, "", None
    if not params.cytact.enabled:
        not_computed = "disabled in the configuration (pipelines.pet_quant.cytact.enabled)"
    elif not lesions:
        not_computed = "no lesion"
    else:
        try:
            prediction = lesion_cytact(volume, lesions, params.cytact, device)
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
