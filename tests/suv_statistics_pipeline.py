"""A pipeline that exists only in the tests: SUV statistics of a PET series (mean, maximum and percentiles of
SUVbw inside the body), reported as a TID 1500 SR. It is registered by a test (`Registry.with_pipeline`) and
proves that adding a pipeline takes its module, one registry entry, its configuration block and its tests:
it uses only the registry protocol, the shared output module and the PET volume loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydantic import Field
from pydicom.sr.codedict import codes

from common.settings import Strict
from common.states import OutputKind
from common.types import JobResult
from pipelines.errors import NothingToAnalyse
from pipelines.output.gate import OutputWriter
from pipelines.output.sr import UNIT_NONE, StudyResults, measurement_document, private_concept, sr_algorithm
from pipelines.petlesions.volume import load_pet_volume
from pipelines.registry import JobInputs, Pipeline, Reads, Writes
from pipelines.types import AlgorithmIdentity

SUVBW = hd.sr.CodedConcept("126401", "DCM", "SUVbw")
PERCENTILE = private_concept("SUV_PCTL", "Percentile of SUVbw inside the body")


class SuvStatisticsSettings(Strict):
    percentiles: list[float] = Field(default_factory=lambda: [50.0, 90.0, 99.0])
    body_suv: float = Field(0.3, gt=0)  # voxels above this SUV count as inside the body


@dataclass(frozen=True)
class SeriesStatistics:
    series_instance_uid: str
    source_paths: tuple[Path, ...]
    voxels: int
    mean: float
    maximum: float
    percentiles: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SuvStatisticsResult:
    series: tuple[SeriesStatistics, ...]


class SuvStatistics(Pipeline[SuvStatisticsResult]):
    name = "suv_statistics"
    title = "SUV statistics (test-only)"
    settings_model = SuvStatisticsSettings
    reads = Reads("PT")
    writes = Writes(sr_series_number=996)  # its own last digit: the registry refuses one another pipeline's take

    def analyse(self, inputs: JobInputs, pipelines: Strict, workdir: Path) -> SuvStatisticsResult:
        settings: SuvStatisticsSettings = self.settings(pipelines)
        found = []
        for series in inputs.selected_series():
            volume = load_pet_volume(series.paths)
            body = volume.suv[volume.suv > settings.body_suv]
            if body.size == 0:
                continue
            found.append(
                SeriesStatistics(
                    volume.series_instance_uid,
                    volume.source_paths,
                    int(body.size),
                    float(body.mean()),
                    float(body.max()),
                    tuple((p, float(np.percentile(body, p))) for p in settings.percentiles),
                )
            )
        if not found:
            raise NothingToAnalyse("no PET series with uptake above the body threshold")
        return SuvStatisticsResult(tuple(found))

    def report(
        self, inputs: JobInputs, result: SuvStatisticsResult, pipelines: Strict, new_path: Callable[[], Path]
    ) -> JobResult:
        identity = AlgorithmIdentity.of("test-suv-statistics", self.settings(pipelines).model_dump(mode="json"))
        algorithm = sr_algorithm(identity)
        outputs, lines = [], []
        with OutputWriter(new_path) as writer:
            for stats in result.series:
                sources = [pydicom.dcmread(path) for path in stats.source_paths]

                def suv(value: float, derivation: hd.sr.CodedConcept) -> hd.sr.Measurement:
                    return hd.sr.Measurement(
                        name=SUVBW, value=value, unit=UNIT_NONE, derivation=derivation, algorithm_id=algorithm
                    )

                measurements = [suv(stats.mean, codes.SCT.Mean), suv(stats.maximum, codes.SCT.Maximum)] + [
                    hd.sr.Measurement(name=PERCENTILE, value=v, unit=UNIT_NONE, algorithm_id=algorithm)
                    for _, v in stats.percentiles
                ]
                summary = f"SUV statistics of {stats.voxels} voxels: mean {stats.mean:.2f}, max {stats.maximum:.2f}"
                document = measurement_document(
                    sources,
                    [],
                    [],  # whole-body statistics: of the study, not of a lesion
                    identity,
                    hd.sr.CodedConcept("44139-4", "LN", "PET whole body"),
                    summary,
                    [f"percentile {p:g}: {v:.2f}" for p, v in stats.percentiles],
                    self.writes.sr_series_number,
                    "test SUV statistics (RESEARCH USE ONLY)",
                    study_results=StudyResults(tuple(measurements)),
                )
                outputs.append(writer.save(document, OutputKind.SR, 0, stats.series_instance_uid))
                lines.append(summary)
        return JobResult(tuple(outputs), " ".join(lines))


SUV_STATISTICS = SuvStatistics()
