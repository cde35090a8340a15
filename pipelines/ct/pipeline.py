"""Registration of the `ct_radiomics` pipeline: longitudinal (a job is first paired with its baseline study);
what it reads from a job (the selected CT, the study's PET for lesions when the CT has no contours, readers'
SEG and RTSTRUCT, the pairing decision with the baseline as stored) and what the index keeps of its result
(features per volume, lesions with their tracking identity, the patient-level assessment). The analysis
code is imported by the methods, in the worker processes only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import Strict
from common.types import (
    CtAssessmentRecord,
    CtLesionRecord,
    FeatureExtractionRecord,
    JobResult,
    ResultRecords,
)
from pipelines.ct.settings import CtRadiomicsSettings
from pipelines.errors import ConfigurationProblem, NothingToAnalyse, PipelineError
from pipelines.pairing import PairingSettings
from pipelines.pet.pipeline import PET_QUANT
from pipelines.registry import JobInputs, Pipeline

if TYPE_CHECKING:
    from pipelines.ct.types import CtRadiomicsResult


def result_records(result: CtRadiomicsResult) -> ResultRecords:
    """What the index keeps of a CT result: features per volume, lesions with their status, the assessment."""
    digest = hashlib.sha256(result.parameters.encode()).hexdigest()
    extractions = tuple(
        FeatureExtractionRecord(
            ct_series_uid=result.ct_series_uid,
            volume=feature_set.volume,
            tracking_uid=feature_set.tracking_uid,
            voxel_count=feature_set.voxel_count,
            seconds=feature_set.seconds,
            pyradiomics_version=result.pyradiomics_version,
            parameters=result.parameters,
            parameters_sha256=digest,
            features=dict(feature_set.features),
        )
        for feature_set in result.features
    )
    status = {c.tracking_uid: c for c in result.changes}
    lesions = tuple(
        CtLesionRecord(
            lesion_number=lesion.number,
            tracking_uid=lesion.tracking_uid,
            tracking_identifier=lesion.tracking_identifier,
            role=lesion.role,
            source=lesion.source,
            label=lesion.label,
            lymph_node=lesion.lymph_node,
            volume_ml=lesion.volume_ml,
            long_axis_mm=lesion.long_axis_mm,
            short_axis_mm=lesion.short_axis_mm,
            centroid_mm=lesion.centroid_mm,
            status=status[lesion.tracking_uid].status if lesion.tracking_uid in status else "baseline",
            progressive=bool(lesion.tracking_uid in status and status[lesion.tracking_uid].progressive),
        )
        for lesion in result.lesions
    )
    recist, signature = result.recist, result.signature_class
    assessment = CtAssessmentRecord(
        time_point=result.time_point,
        baseline_study_uid=result.baseline.study_instance_uid if result.baseline else "",
        sum_diameters_t0_mm=recist.sum_t0_mm if recist else None,
        sum_diameters_t1_mm=recist.sum_t1_mm if recist else None,
        percent_change=recist.percent_change if recist else None,
        recist_category=recist.category if recist else "",
        new_lesions=recist.new_lesions if recist else None,
        progressive_lesions=recist.progressive_lesions if recist else None,
        pattern=recist.pattern if recist else "",
        deltas=dict(result.deltas) if result.deltas else None,
        signature_class=signature.label if signature else "",
        signature_probability=signature.probability_systemic if signature else None,
    )
    return ResultRecords(extractions=extractions, ct_lesions=lesions, ct_assessment=assessment)


class CtRadiomics(Pipeline["CtRadiomicsResult"]):
    name = "ct_radiomics"
    title = "CT delta-radiomics"
    settings_model = CtRadiomicsSettings
    modality = "CT"
    longitudinal = True
    analysis_modules = ("pipelines.ct.analysis", "pipelines.ct.report")

    def pairing_settings(self, pipelines: Strict) -> PairingSettings:
        return self.settings(pipelines).pairing

    def check_configuration(self, pipelines: Strict) -> tuple[str, ...]:
        settings: CtRadiomicsSettings = self.settings(pipelines)
        lines = []
        if settings.ar_signature is not None:
            from models.cards import verify_card
            from models.errors import ModelError

            try:
                card = verify_card(settings.ar_signature)
            except ModelError as error:
                raise ConfigurationProblem("pipelines.ct_radiomics.ar_signature", str(error)) from None
            synthetic = " (SYNTHETIC demonstration weights)" if card.synthetic_training_data else ""
            lines.append(
                f"pipelines.ct_radiomics.ar_signature: {card.name} {card.version} sha256 {card.sha256[:16]}{synthetic}"
            )
        if settings.published_signature is not None:
            from pipelines.ct.delta import read_published_signature

            try:
                read_published_signature(settings.published_signature)
            except PipelineError as error:
                raise ConfigurationProblem("pipelines.ct_radiomics.published_signature", str(error)) from None
        return tuple(lines)

    def analyse(self, inputs: JobInputs, pipelines: Strict, workdir: Path) -> CtRadiomicsResult:
        """Lesions on the selected CT (readers' SEG/RTSTRUCT, else the study's PET lesions), then with a baseline
        registration, tracking and RECIST; pyradiomics features of P, M and each lesion; Δ and the signature."""
        from pipelines.ct.analysis import analyse_ct_study
        from pipelines.imaging.annotations import ANNOTATION_CLASSES, SR_CLASSES

        ct = inputs.largest("CT", selected_only=True)
        if ct is None:
            raise NothingToAnalyse("no CT series selected for analysis")
        pet = inputs.largest("PT")
        pairing = inputs.pairing
        return analyse_ct_study(
            ct.paths,
            # CT lesions come from SEG and RTSTRUCT (SR annotations hold points, not regions).
            list(inputs.instances(ANNOTATION_CLASSES - SR_CLASSES).values()),
            pet.paths if pet else (),
            self.settings(pipelines),
            PET_QUANT.settings(pipelines),  # the PET lesion method for lesions from the PET
            pairing.baseline if pairing else None,
            pairing.reason if pairing else "no pairing decision",
            workdir,
            baseline_expected=bool(pairing and pairing.baseline_expected),
            annotation_settings=pipelines.annotations,  # the shared block
        )

    def report(
        self, inputs: JobInputs, result: CtRadiomicsResult, pipelines: Strict, new_path: Callable[[], Path]
    ) -> JobResult:
        from pipelines.ct.analysis import algorithm_identity, summarise
        from pipelines.ct.report import write_ct_report

        summary = summarise(result)
        outputs = write_ct_report(result, algorithm_identity(self.settings(pipelines)), summary, new_path)
        return JobResult(outputs, summary, (), result_records(result))


CT_RADIOMICS = CtRadiomics()
