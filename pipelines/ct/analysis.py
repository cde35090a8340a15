"""Analyse stage of the longitudinal CT method: delta-radiomics of the primary tumour and the merged
metastases between the baseline T0 and the first assessment T1; each later assessment (T2, ...) against the
same baseline for RECIST, the best response and, at a progression, acquired resistance and its pattern
(oligo ≤ 3 new or progressive lesions, systemic > 3). Lesions → (with a baseline) registration, tracking
(the primary is the baseline's, carried by tracking), RECIST → parallel pyradiomics extraction → Δ features
(at T1) → published signature → optional classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path

from common.types import Baseline, LesionRole
from models.ar_signature import load as load_ar_signature
from models.errors import ModelError
from pipelines.ct.delta import deltas, read_published_signature, signature_features
from pipelines.ct.lesions import ct_lesions, load_ct_volume, volume_masks
from pipelines.ct.radiomics import extract_volumes, parameter_file_text, pyradiomics_version
from pipelines.ct.settings import CtRadiomicsSettings
from pipelines.ct.tracking import assess, match_lesions, register
from pipelines.ct.types import CtLesion, CtRadiomicsResult, RecistAssessment, Resistance, SignatureClass
from pipelines.imaging.geometry import to_sitk
from pipelines.imaging.settings import AnnotationSettings
from pipelines.petlesions.settings import PetLesionSettings
from pipelines.types import AlgorithmIdentity, ModelIdentity

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "immunode-ct-delta-radiomics"


def algorithm_identity(settings: CtRadiomicsSettings) -> AlgorithmIdentity:
    # Weight-free: the identity hash covers the radiomics parameter file and the pipeline settings.
    return AlgorithmIdentity.of(
        ALGORITHM_NAME, {"pyradiomics": parameter_file_text(), "settings": settings.model_dump(mode="json")}
    )


def analyse_ct_study(
    ct_paths: Sequence[Path],
    annotations: Sequence[Path],
    pet_paths: Sequence[Path],
    settings: CtRadiomicsSettings,
    pet_params: PetLesionSettings,
    baseline: Baseline | None,
    pairing_reason: str,
    workdir: Path,
    baseline_expected: bool = False,
    annotation_settings: AnnotationSettings | None = None,
) -> CtRadiomicsResult:
    """Raises PipelineError subclasses (no lesions, unusable series) with the reason for the job record."""
    ct = load_ct_volume(ct_paths)
    lesions, source, primary_reason, left_out = ct_lesions(
        ct, annotations, pet_paths, settings, pet_params, annotation_settings
    )
    paired = baseline is not None and bool(baseline.lesions) and bool(baseline.ct_paths)
    registration_text, changes, recist = "", (), None
    assessment = len(baseline.assessments) + 1 if baseline is not None else 0
    if paired:
        before = load_ct_volume(baseline.ct_paths)
        registration = register(to_sitk(before.hu, before.geometry), to_sitk(ct.hu, ct.geometry), settings.registration)
        tracked, changes = match_lesions(baseline.lesions, lesions, registration, settings, baseline.assessments)
        lesions, primary_reason = carried_roles(tracked, baseline)
        weeks = _weeks(baseline.study_date, ct.study_date)
        recist = assess(baseline.lesions, changes, settings, baseline.assessments, weeks)
        registration_text = registration.description
    masks = volume_masks(lesions, ct.geometry.shape, settings.per_lesion_features)
    uids = {f"L{lesion.number}": lesion.tracking_uid for lesion in lesions}
    features = extract_volumes(ct.hu, ct.geometry, masks, settings.extraction_processes, workdir, uids)
    current = {f.volume: f.features for f in features if f.volume in ("P", "M")}
    result_deltas: dict[str, float | None] = {}
    published, not_reported = (), ""
    if paired and assessment > 1:
        not_reported = (
            f"assessment T{assessment}: the method's delta features are T1 against T0 (in the T1 report); "
            "this report gives RECIST and resistance"
        )
    elif paired and baseline.features:
        result_deltas = deltas(baseline.features, current)
        if settings.published_signature is not None:
            published = signature_features(
                read_published_signature(settings.published_signature), baseline.features, current
            )
        else:
            not_reported = "published signature table not configured (pipelines.ct_radiomics.published_signature)"
    elif paired:
        not_reported = "the baseline has no stored features"
    else:
        not_reported = "no baseline: delta features need T0 and T1"
    signature_class, class_not_given = _class_at_progression(settings, recist, result_deltas, baseline)
    # T0: this study is the baseline (no earlier one exists); "unpaired": a baseline was expected but has no result.
    time_point = f"T{assessment}" if paired else ("unpaired" if baseline is not None or baseline_expected else "T0")
    return CtRadiomicsResult(
        study_instance_uid=ct.study_instance_uid,
        ct_series_uid=ct.series_instance_uid,
        ct_paths=ct.paths,
        geometry=ct.geometry,
        lesions=lesions,
        lesion_source=source,
        primary_reason=primary_reason,
        features=features,
        parameters=parameter_file_text(),
        pyradiomics_version=pyradiomics_version(),
        time_point=time_point,
        pairing_reason=pairing_reason,
        baseline=baseline,
        registration=registration_text,
        changes=changes,
        recist=recist,
        deltas=result_deltas,
        signature_features=published,
        signature_not_reported=not_reported,
        signature_class=signature_class,
        signature_class_not_given=class_not_given,
        not_lesions=tuple(f"{item.label}: {item.reason}" for item in left_out),
        t1_window_weeks=settings.t1_window_weeks,
        stable_disease_min_weeks=settings.stable_disease_min_weeks,
    )


def _weeks(baseline: date | None, followup: date | None) -> float | None:
    return (followup - baseline).days / 7.0 if baseline is not None and followup is not None else None


def carried_roles(tracked: Sequence[CtLesion], baseline: Baseline) -> tuple[tuple[CtLesion, ...], str]:
    """The primary is chosen once, at the baseline, and carried by tracking: a follow-up lesion matched to the
    baseline's primary is the primary; every other lesion (new ones included) is a metastasis."""
    primaries = {b.tracking_uid: b for b in baseline.lesions if b.role is LesionRole.PRIMARY}
    lesions = tuple(
        replace(lesion, role=LesionRole.PRIMARY if lesion.tracking_uid in primaries else LesionRole.METASTASIS)
        for lesion in tracked
    )
    carried = [lesion.tracking_identifier for lesion in lesions if lesion.role is LesionRole.PRIMARY]
    if carried:
        return lesions, f"primary carried from the baseline by tracking ({', '.join(carried)})"
    if primaries:
        names = ", ".join(b.tracking_identifier for b in primaries.values())
        return lesions, f"the baseline's primary ({names}) is not found at this follow-up: no primary (P) here"
    return lesions, "the baseline has no primary: all lesions are metastases"


def _class_at_progression(
    settings: CtRadiomicsSettings,
    recist: RecistAssessment | None,
    deltas_now: dict[str, float | None],
    baseline: Baseline | None,
) -> tuple[SignatureClass | None, str]:
    """The classifier tells oligo- from systemic acquired resistance, as the method compares patients who developed
    it: a class only at the progression that is acquired resistance, from the course's T1 Δ features."""
    if recist is None or recist.resistance is not Resistance.ACQUIRED:
        return None, (
            "no class is given: the classifier separates oligo- from systemic acquired resistance and applies at the "
            "progression that is acquired resistance, not at this assessment"
        )
    first = next((a for a in baseline.assessments if a.number == 1), None) if baseline is not None else None
    t1 = deltas_now if recist.assessment == 1 else dict(first.deltas) if first is not None and first.deltas else {}
    if not t1:
        return None, "no class is given: the T1 delta features of this course are not stored"
    return _classify(settings, t1)


def _classify(settings: CtRadiomicsSettings, values: dict[str, float | None]) -> tuple[SignatureClass | None, str]:
    if settings.ar_signature is None:
        return None, "no class is given: no AR-signature classifier configured (pipelines.ct_radiomics.ar_signature)"
    try:
        signature, card = load_ar_signature(settings.ar_signature)
        probability = signature.probability_systemic(values)
    except ModelError as error:
        return None, f"no class is given: {error}"
    model = ModelIdentity(card.name, card.version, card.sha256, card.synthetic_training_data)
    label = "systemic" if probability >= 0.5 else "oligo"
    return SignatureClass(label, probability, model), ""


def summarise(result: CtRadiomicsResult) -> str:
    roles = [lesion.role.value for lesion in result.lesions]
    text = (
        f"CT radiomics {result.time_point}: {len(result.lesions)} lesion(s) from {result.lesion_source} "
        f"({roles.count('primary')} primary, {roles.count('metastasis')} metastasis); "
        f"{len(result.features)} volume(s) extracted."
    )
    labelled = [f"{x.tracking_identifier} ({x.role.value}, {x.volume_ml:.1f} ml)" for x in result.lesions]
    text += " Lesions: " + "; ".join(labelled) + "."
    if result.not_lesions:
        text += f" Not lesions, left out: {'; '.join(result.not_lesions)}."
    if result.recist is not None:
        r = result.recist
        change = f"{r.percent_change:+.1f} %" if r.percent_change is not None else "n/a"
        weeks = f" at {r.weeks:.1f} weeks" if r.weeks is not None else ""
        text += (
            f" Assessment T{r.assessment}{weeks}: RECIST 1.1 {r.category} (sum {r.sum_t0_mm:.1f} -> "
            f"{r.sum_t1_mm:.1f} mm, {change}; nadir {r.nadir_mm:.1f} mm), best response {r.best_response}; "
            f"{r.new_lesions} new, {r.progressive_lesions} progressive."
        )
        if r.resistance is Resistance.ACQUIRED:
            text += f" Progression after response or lasting stable disease: acquired resistance, {r.pattern}."
        elif r.resistance is Resistance.PRIMARY:
            text += " Progression without an earlier response or lasting stable disease: not acquired resistance."
    return text
