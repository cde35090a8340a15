"""The `throwaway` pipeline: the instances of each selected series counted and their stored pixel values averaged,
reported in an SR (series 997) and kept as one `InstanceCountRecord` per series in `throwaway_instance_counts`."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from common.records import RecordTable
from common.settings import Strict
from common.states import OutputKind
from common.types import JobResult
from pipelines.errors import NothingToAnalyse
from pipelines.registry import JobInputs, Pipeline, Reads, Writes


class ThrowawaySettings(Strict):
    minimum_instances: int = Field(1, ge=1)  # fewer: the series is counted, and said to be sparse


class Coverage(enum.Enum):
    SPARSE = "sparse"
    ENOUGH = "enough"


@dataclass(frozen=True)
class InstanceCountRecord:
    """What the index keeps of one series: its instance count, image size and mean stored pixel value."""

    series_instance_uid: str
    instances: int
    rows_columns: tuple[int, int]
    mean_stored_value: float
    coverage: Coverage
    note: str | None = None


INSTANCE_COUNTS = RecordTable(InstanceCountRecord, "throwaway_instance_counts")


@dataclass(frozen=True)
class CountResult:
    counts: tuple[InstanceCountRecord, ...]
    source_paths: tuple[Path, ...]  # of the first series, the SR's evidence


class Throwaway(Pipeline[CountResult]):
    name = "throwaway"
    title = "Instance counts (test-only)"
    settings_model = ThrowawaySettings
    reads = Reads("PT")
    writes = Writes(
        sr_series_number=997, records=(INSTANCE_COUNTS,), migrations=Path(__file__).parent / "migrations"
    )

    def analyse(self, inputs: JobInputs, pipelines: Strict, workdir: Path) -> CountResult:
        import numpy as np
        import pydicom

        settings: ThrowawaySettings = self.settings(pipelines)
        counts = []
        for series in inputs.selected_series():
            images = [pydicom.dcmread(path) for path in series.paths]
            enough = len(images) >= settings.minimum_instances
            counts.append(
                InstanceCountRecord(
                    series.series_instance_uid,
                    len(images),
                    (int(images[0].Rows), int(images[0].Columns)),
                    float(np.mean([image.pixel_array.mean() for image in images])),
                    Coverage.ENOUGH if enough else Coverage.SPARSE,
                    None if enough else f"fewer than {settings.minimum_instances} instances",
                )
            )
        if not counts:
            raise NothingToAnalyse("no series selected")
        return CountResult(tuple(counts), inputs.selected_series()[0].paths)

    def report(
        self, inputs: JobInputs, result: CountResult, pipelines: Strict, new_path: Callable[[], Path]
    ) -> JobResult:
        import highdicom as hd
        import pydicom

        from pipelines.output.gate import OutputWriter
        from pipelines.output.sr import (
            UNIT_NONE,
            StudyResults,
            measurement,
            measurement_document,
            private_concept,
            sr_algorithm,
        )
        from pipelines.output.versions import SeriesNumbers
        from pipelines.types import AlgorithmIdentity

        identity = AlgorithmIdentity.of("test-instance-counts", self.settings(pipelines).model_dump(mode="json"))
        algorithm = sr_algorithm(identity)
        count = private_concept("THROWAWAY_N", "Instances of the series")
        summary = "; ".join(f"{c.series_instance_uid}: {c.instances} instance(s)" for c in result.counts)
        document = measurement_document(
            [pydicom.dcmread(path) for path in result.source_paths],
            [],
            [],
            identity,
            hd.sr.CodedConcept("44139-4", "LN", "PET whole body"),
            summary,
            [],
            SeriesNumbers(inputs.version.series_numbers_used).take(self.writes.sr_series_number),
            "test instance counts (RESEARCH USE ONLY)",
            study_results=StudyResults(
                tuple(measurement(count, c.instances, UNIT_NONE, algorithm) for c in result.counts)
            ),
        )
        with OutputWriter(new_path) as writer:
            output = writer.save(document, OutputKind.SR, 0, result.counts[0].series_instance_uid)
        return JobResult((output,), summary, (), result.counts)


THROWAWAY = Throwaway()
