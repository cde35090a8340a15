"""Registration of the `pet_quant` pipeline: what it reads from a job (the selected PET series, a CT of the
same frame of reference for anatomy, readers' annotations, the patient's imported data, the previous report
of each series) and how its results are reported and recorded. The analysis code is imported by the
methods, in the worker processes only."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import Strict
from common.types import LESION_RESULTS, JobResult, LesionRecord, from_attributes
from pipelines.errors import NothingToAnalyse, PipelineError
from pipelines.pet.settings import PetQuantSettings
from pipelines.registry import JobInputs, Pipeline, Reads, Writes, card_line, checked_card

if TYPE_CHECKING:
    from pipelines.pet.types import PetJob, PetQuantResult

logger = logging.getLogger(__name__)


def lesion_records(result: PetQuantResult) -> tuple[LesionRecord, ...]:
    """The index's lesion rows of one series' result."""
    model = result.cytact_model
    summarised = set(result.cytact.lesions) if result.cytact else set()
    return tuple(
        from_attributes(
            LesionRecord,
            lesion.measurements,
            series_instance_uid=result.volume.series_instance_uid,
            lesion_number=lesion.number,
            tracking_uid=lesion.tracking_uid,
            cytact=lesion.cytact,
            cytact_model=model.key if model else "",
            embedding=tuple(lesion.embedding) if lesion.embedding is not None else None,
            patient_summary=lesion.number in summarised,
        )
        for lesion in result.lesions
    )


class PetQuant(Pipeline["PetJob"]):
    name = "pet_quant"
    title = "PET lesions and CytAct"
    settings_model = PetQuantSettings
    reads = Reads(
        "PT",
        context=(("CT", "anatomy: physiological uptake, organs (same frame of reference)"),),
        annotations=True,  # readers' lesions
        patient_data=True,  # the response models
    )
    writes = Writes(sr_series_number=991, seg_series_number=990, records=(LESION_RESULTS,))
    analysis_modules = ("pipelines.pet.analysis", "pipelines.pet.report", "pipelines.omics.response")

    def check_configuration(self, pipelines: Strict) -> tuple[str, ...]:
        from models.cards import SHIPPED_CYTACT_WEIGHTS

        params: PetQuantSettings = self.settings(pipelines)
        response = pipelines.response  # the shared block of the response models
        files = [
            ("pipelines.response.expression_weights", response.expression_weights),
            ("pipelines.response.fusion_weights", response.fusion_weights),
        ]
        if params.cytact.enabled:
            files.append(("pipelines.pet_quant.cytact.weights", params.cytact.weights or SHIPPED_CYTACT_WEIGHTS))
        return tuple(card_line(key, checked_card(key, path)) for key, path in files if path is not None)

    def analyse(self, inputs: JobInputs, pipelines: Strict, workdir: Path) -> PetJob:
        """Each selected PET series: SUV volume, lesions (readers' annotations in its frame of reference, else
        automatic detection), measurements, CytAct, and the patient-level response models."""
        import pydicom

        from pipelines.imaging.annotations import ANNOTATION_CLASSES, IMAGE_CLASSES, SR_CLASSES
        from pipelines.omics.response import predict_response
        from pipelines.pet.analysis import analyse_pet_series
        from pipelines.pet.types import PetJob

        params: PetQuantSettings = self.settings(pipelines)
        annotations = list(inputs.instances(ANNOTATION_CLASSES).values())
        # Only SR annotations (2D image coordinates) need the geometry of the images they point at.
        images = (
            {
                uid: pydicom.dcmread(path, stop_before_pixels=True)
                for uid, path in inputs.instances(IMAGE_CLASSES).items()
            }
            if inputs.instances(SR_CLASSES)
            else {}
        )
        results, problems = [], []
        for series in sorted(inputs.selected_series(), key=lambda s: s.series_instance_uid):
            ct = inputs.largest("CT", frame_of_reference_uid=series.frame_of_reference_uid)
            try:
                result = analyse_pet_series(
                    series.paths,
                    params,
                    annotations,
                    images,
                    ct.paths if ct and series.frame_of_reference_uid else (),
                    pipelines.annotations,  # the shared blocks
                    pipelines.compute.device,
                )
            except PipelineError as error:
                problems.append(f"series {series.series_instance_uid}: {error}")
                logger.warning("job %s series %s: %s", inputs.job_id, series.series_instance_uid, error)
                continue
            embeddings = [lesion.embedding for lesion in result.lesions if lesion.embedding is not None]
            response = predict_response(
                inputs.patient,
                embeddings,
                result.cytact_model,
                pipelines.response,  # the shared blocks
                pipelines.compute.device,
            )
            results.append(dataclasses.replace(result, response=response))
        return PetJob(tuple(results), tuple(problems))

    def report(self, inputs: JobInputs, result: PetJob, pipelines: Strict, new_path: Callable[[], Path]) -> JobResult:
        """A SEG (when there are lesions) and an SR per analysed series, superseding the series' previous SR: a
        new version, in new series, whose lesions keep the tracking UIDs of the previous version's that they
        overlap, saying why it was made and who confirmed its lesions."""
        import pydicom

        from pipelines.imaging.annotations import ANNOTATION_CLASSES
        from pipelines.output.versions import SeriesNumbers, reader_observers
        from pipelines.pet.analysis import algorithm_identity, summarise
        from pipelines.pet.report import versioned, write_pet_report

        identity = algorithm_identity(self.settings(pipelines))
        problems = list(result.problems)
        outputs, summaries, records = [], [], []
        numbers = SeriesNumbers(inputs.version.series_numbers_used)
        readers = reader_observers(inputs.instances(ANNOTATION_CLASSES).values())
        for series_result in result.results:
            series_uid = series_result.volume.series_instance_uid
            previous = inputs.previous_reports.get(series_uid)
            previous_report = (
                pydicom.dcmread(previous.path) if previous is not None and previous.path.exists() else None
            )
            series_result, version = versioned(series_result, previous, inputs.version, readers, numbers)
            summary = summarise(series_result)
            try:
                outputs += write_pet_report(
                    series_result,
                    identity,
                    summary,
                    previous_report,
                    new_path,
                    version,
                    seg_encodings=inputs.seg_encodings,
                )
            except PipelineError as error:
                problems.append(f"series {series_uid}: {error}")
                logger.warning("job %s series %s: %s", inputs.job_id, series_uid, error)
                continue
            summaries.append(summary)
            records += lesion_records(series_result)
        if not outputs:
            raise NothingToAnalyse("; ".join(problems) or "no series selected for analysis")
        detail = " ".join(summaries) + (" Not analysed: " + "; ".join(problems) if problems else "")
        return JobResult(tuple(outputs), detail, tuple(problems), tuple(records))


PET_QUANT = PetQuant()
