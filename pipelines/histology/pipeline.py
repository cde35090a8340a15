"""Registration of the `histology` pipeline: whole-slide images (modality SM) into a slide embedding for the
attention fusion, an attention heatmap (SEG) and a report (SR). The analysis code and the models are
imported in the worker processes only."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import Strict
from common.types import SLIDE_RESULTS, JobResult, PatientData, SlideRecord
from pipelines.errors import ConfigurationProblem, NothingToAnalyse, PipelineError
from pipelines.histology.errors import ModelsNotConfigured
from pipelines.histology.settings import HistologySettings
from pipelines.registry import JobInputs, Pipeline, Reads, Writes, card_line, checked_card

if TYPE_CHECKING:
    from pipelines.histology.types import HistologyJob, SlideAnalysis

logger = logging.getLogger(__name__)

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def slide_record(result: SlideAnalysis) -> SlideRecord:
    return SlideRecord(
        series_instance_uid=result.series_instance_uid,
        mil_model=result.mil.key,
        encoder_model=result.encoder.key,
        embedding=tuple(float(v) for v in result.embedding),
        probability=result.probability,
        patches=len(result.origins),
        tissue_fraction=result.tissue_fraction,
        microns_per_pixel=result.patch_level.microns_per_pixel,
    )


def _models(settings: HistologySettings, device: object) -> tuple:
    """(encoder, its identity, MIL, its identity) on `device` (a torch device), verified against their cards and
    against each other."""
    from models.errors import ModelError
    from models.serving import load_histology_encoder, load_histology_mil
    from pipelines.omics.response import model_identity

    if settings.encoder_weights is None or settings.mil_weights is None:
        raise ModelsNotConfigured(
            "no histology weights configured (pipelines.histology.encoder_weights and mil_weights); the slide is "
            "stored: train them with `immunode train histology`, configure them and re-analyse"
        )
    try:
        encoder, encoder_card = load_histology_encoder(settings.encoder_weights, device)
        mil, mil_card = load_histology_mil(settings.mil_weights, device)
    except ModelError as error:
        raise ModelsNotConfigured(f"histology weights not usable: {error}") from None
    if mil_card.parameters.get("encoder_sha256") != encoder_card.sha256:
        raise ModelsNotConfigured("the MIL weights were trained on the features of another patch encoder")
    return encoder, model_identity(encoder_card), mil, model_identity(mil_card)


class Histology(Pipeline["HistologyJob"]):
    name = "histology"
    title = "Whole-slide histology (fusion arm)"
    settings_model = HistologySettings
    reads = Reads("SM", patient_data=True)  # the response models, with the slide
    writes = Writes(sr_series_number=995, seg_series_number=994, records=(SLIDE_RESULTS,))
    analysis_modules = ("pipelines.histology.analysis", "pipelines.histology.report", "pipelines.omics.response")

    def check_configuration(self, pipelines: Strict) -> tuple[str, ...]:
        """Both weights files against their cards, and the MIL against its encoder (hashes only: no network is
        loaded into the node's process)."""
        settings: HistologySettings = self.settings(pipelines)
        if settings.encoder_weights is None and settings.mil_weights is None:
            return ("pipelines.histology: no weights configured; slides are stored, not analysed",)
        if settings.encoder_weights is None or settings.mil_weights is None:
            raise ConfigurationProblem("pipelines.histology", "set both encoder_weights and mil_weights")
        encoder = checked_card("pipelines.histology.encoder_weights", settings.encoder_weights)
        mil = checked_card("pipelines.histology.mil_weights", settings.mil_weights)
        if mil.parameters.get("encoder_sha256") != encoder.sha256:
            raise ConfigurationProblem(
                "pipelines.histology.mil_weights", "the MIL weights were trained on the features of another encoder"
            )
        return (
            card_line("pipelines.histology.encoder_weights", encoder),
            card_line("pipelines.histology.mil_weights", mil),
        )

    def analyse(self, inputs: JobInputs, pipelines: Strict, workdir: Path) -> HistologyJob:
        from models.device import select_device
        from pipelines.histology.analysis import analyse_slide
        from pipelines.histology.types import HistologyJob
        from pipelines.omics.response import predict_response

        settings: HistologySettings = self.settings(pipelines)
        device = select_device(pipelines.compute.device)  # the shared block
        encoder, encoder_identity, mil, mil_identity = _models(settings, device.torch_device)
        results, problems = [], []
        for series in sorted(inputs.selected_series(), key=lambda s: s.series_instance_uid):
            try:
                result = analyse_slide(
                    series.series_instance_uid,
                    series.paths,
                    settings,
                    encoder,
                    encoder_identity,
                    mil,
                    mil_identity,
                    device,
                )
            except PipelineError as error:
                problems.append(f"series {series.series_instance_uid}: {error}")
                logger.warning("job %s series %s: %s", inputs.job_id, series.series_instance_uid, error)
                continue
            patient = inputs.patient or PatientData("", "", None, None)
            with_slide = dataclasses.replace(patient, slide=slide_record(result))
            response = predict_response(with_slide, None, None, pipelines.response, pipelines.compute.device)
            results.append(dataclasses.replace(result, response=response))
        return HistologyJob(tuple(results), tuple(problems))

    def report(
        self, inputs: JobInputs, result: HistologyJob, pipelines: Strict, new_path: Callable[[], Path]
    ) -> JobResult:
        from pipelines.histology.report import write_histology_report
        from pipelines.types import AlgorithmIdentity

        settings: HistologySettings = self.settings(pipelines)
        problems, outputs, records, lines = list(result.problems), [], [], []
        for slide in result.results:
            identity = AlgorithmIdentity(
                "immunode-histology-mil", slide.mil.version, slide.mil.weights_sha256, slide.mil.key
            )
            try:
                outputs += write_histology_report(slide, identity, settings.microns_per_pixel, new_path)
            except PipelineError as error:
                problems.append(f"series {slide.series_instance_uid}: {error}")
                logger.warning("job %s series %s: %s", inputs.job_id, slide.series_instance_uid, error)
                continue
            records.append(slide_record(slide))
            lines.append(
                f"Slide {slide.series_instance_uid}: {len(slide.origins)} patches, MIL probability "
                f"{slide.probability:.3f}."
            )
        if not outputs:
            raise NothingToAnalyse("; ".join(problems) or "no whole-slide series selected for analysis")
        detail = " ".join(lines) + (" Not analysed: " + "; ".join(problems) if problems else "")
        return JobResult(tuple(outputs), detail, tuple(problems), tuple(records))


HISTOLOGY = Histology()
