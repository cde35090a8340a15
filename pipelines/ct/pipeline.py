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
    CT_ASSESSMENTS,
    CT_LESION_RESULTS,
    RADIOMICS_EXTRACTIONS,
    CtAssessmentRecord,
    CtLesionRecord,
    FeatureExtractionRecord,
    JobResult,
    from_attributes,
)
from pipelines.ct.settings import CtRadiomicsSettings
from pipelines.errors import ConfigurationProblem, NothingToAnalyse, PipelineError
from pipelines.pairing import PairingSettings
from pipelines.petlesions.settings import lesion_method_settings
from pipelines.registry import JobInputs, Pipeline, Reads, Writes, card_line, checked_card

if TYPE_CHECKING:
    from pipelines.ct.types import CtRadiomicsResult


def result_records(result: CtRadiomicsResult) -> tuple[object, ...]:
    """What the index keeps of a CT result: features per volume, lesions with their status, the assessment."""
    digest = hashlib.sha256(result.parameters.encode()).hexdigest()
    extractions = tuple(
        from_attributes(
            FeatureExtractionRecord,
            feature_set,
            ct_series_uid=result.ct_series_uid,
            pyradiomics_version=result.pyradiomics_version,
            parameters=result.parameters,
            parameters_sha256=digest,
            features=dict(feature_set.features),
        )
        for feature_set in result.features
    )
    changes = {c.tracking_uid: c for c in result.changes}
    lesions = tuple(
        from_attributes(
            CtLesionRecord,
            lesion,
            lesion_number=lesion.number,
            centroid=lesion.centroid_mm,
            status=changes[lesion.tracking_uid].status if lesion.tracking_uid in changes else "baseline",
            progressive=bool(lesion.tracking_uid in changes and changes[lesion.tracking_uid].progressive),
        )
        for lesion in result.lesions
    )
    signature = result.signature_class
    assessment = from_attributes(
        CtAssessmentRecord,
        result.recist,  # None before a pairing: no RECIST figures
        time_point=result.time_point,
        baseline_study_uid=result.baseline.study_instance_uid if result.baseline else "",
        deltas=dict(result.deltas) if result.deltas else None,
        signature_class=signature.label if signature else "",
        signature_probability=signature.probability_systemic if signature else None,
        resistance=result.recist.resistance.value if result.recist else "",
    )
    return (*extractions, *lesions, assessment)


class CtRadiomics(Pipeline["CtRadiomicsResult"]):
    name = "ct_radiomics"
    title = "CT delta-radiomics"
    settings_model = CtRadiomicsSettings
    reads = Reads(
        "CT",
        context=(("PT", "lesions from the PET when the CT has no readers' contours"),),
        annotations=True,  # readers' SEG and RTSTRUCT lesions
        baseline=True,
    )
    writes = Writes(
        sr_series_number=993,
        seg_series_number=992,
        records=(RADIOMICS_EXTRACTIONS, CT_LESION_RESULTS, CT_ASSESSMENTS),
    )
    analysis_modules = ("pipelines.ct.analysis", "pipelines.ct.report")

    def pairing_settings(self, pipelines: Strict) -> PairingSettings:
        return self.settings(pipelines).pairing

    def check_configuration(self, pipelines: Strict) -> tuple[str, ...]:
        settings: CtRadiomicsSettings = self.settings(pipelines)
        lines = []
        if settings.pet_fallback:
            lesion_method_settings(pipelines)  # one block configures the PET lesion method the fallback uses
        if settings.ar_signature is not None:
            key = "pipelines.ct_radiomics.ar_signature"
            lines.append(card_line(key, checked_card(key, settings.ar_signature)))
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
            lesion_method_settings(pipelines),  # the PET lesion method as configured, for lesions from the PET
            pairing.baseline if pairing else None,
            pairing.reason if pairing else "no pairing decision",
            workdir,
            baseline_expected=bool(pairing and pairing.baseline_expected),
            annotation_settings=pipelines.annotations,  # the shared block
        )

    def report(
        self, inputs: JobInputs, result: CtRadiomicsResult, pipelines: Strict, new_path: Callable[[], Path]
    ) -> JobResult:
        import pydicom

        from pipelines.ct.analysis import algorithm_identity, summarise
        from pipelines.ct.report import write_ct_report
        from pipelines.imaging.annotations import ANNOTATION_CLASSES
        from pipelines.output.versions import SeriesNumbers, reader_observers, report_version

        summary = summarise(result)
        previous = inputs.previous_reports.get(result.ct_series_uid)
        previous_report = pydicom.dcmread(previous.path) if previous is not None and previous.path.exists() else None
        annotated = any(lesion.source == "annotation" for lesion in result.lesions)
        ct = next((s for s in inputs.series if s.series_instance_uid == result.ct_series_uid), None)
        frame = ct.frame_of_reference_uid if ct is not None else ""
        readers = reader_observers(inputs.instances(ANNOTATION_CLASSES).values()) if annotated else ()
        version = report_version(
            inputs.version,
            str(previous_report.SOPInstanceUID) if previous_report is not None else "",
            SeriesNumbers(inputs.version.series_numbers_used),
            self.writes.seg_series_number,
            self.writes.sr_series_number,
            tuple(reader for reader in readers if reader.annotates(frame)),
        )
        identity = algorithm_identity(self.settings(pipelines))
        outputs = write_ct_report(
            result, identity, summary, new_path, previous_report, version, seg_encodings=inputs.seg_encodings
        )
        return JobResult(outputs, summary, (), result_records(result))


CT_RADIOMICS = CtRadiomics()
