"""The pipeline registry: what a pipeline is (`Pipeline`, one protocol) and which pipelines a node runs
(`Registry`). Configuration, routing, job states, the flow and `immunode status` read the registry; no module
compares pipeline names.

A pipeline is its package, one `Pipeline` subclass registered here (`pipelines.builtin`, or a registry a
site or a test extends with `Registry.with_pipeline`), its configuration block (`settings_model`, composed
under `pipelines.<name>`), its migrations and its tests. What it declares:

- `reads` (`Reads`): the series it analyses (the default series match of a routing rule naming it), the other
  series of the study it reads, whether it reads readers' annotations, the patient's imported data, a baseline
  (longitudinal: a job first goes through the pairing stage, `pairing_settings`); a job's inputs hold only
  these;
- `writes` (`Writes`): the Series Numbers of its SEG and SR (unique across the registry, versions and SEG
  encodings included), its result record types with their tables (`common.records.RecordTable`) and the
  folder of the migrations that create those tables;
- `analyse`: a job's inputs (`JobInputs`) → its own typed, frozen result;
- `report`: that result → validated SEG/SR files (through `pipelines.output`) and the `JobResult` the node
  records (its records of the declared types);
- `check_configuration`: start-up checks of the files its block names (weights against their cards).

The module that defines a pipeline stays light (pydantic and this module): the node's own process imports
it for configuration and routing, and only the worker processes import the analysis code its methods use.
"""

from __future__ import annotations

import abc
import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import Field, create_model

from common.records import RecordTable
from common.settings import Strict
from common.states import PairingOutcome, SegEncoding
from common.types import (
    ANNOTATION_SOP_CLASSES,
    Baseline,
    JobResult,
    PatientData,
    PreviousReport,
    ResultVersion,
    SeriesFiles,
)
from pipelines.errors import ConfigurationProblem, RegistryConflict, UnknownPipeline
from pipelines.output.numbers import SERIES_NUMBER_STEP, number_classes
from pipelines.pairing import PairingSettings

if TYPE_CHECKING:
    from models.cards import ModelCard

R = TypeVar("R")


@dataclass(frozen=True)
class PairingContext:
    """What the pairing stage decided for a longitudinal job, and the baseline as the store keeps it."""

    outcome: PairingOutcome | None
    reason: str
    baseline: Baseline | None = None

    @property
    def baseline_expected(self) -> bool:
        return self.outcome is not None and self.outcome.expects_baseline


@dataclass(frozen=True)
class Reads:
    """What a pipeline reads of a study: the series it analyses, by modality (a routing rule naming the pipeline
    without a `series` match selects these); the other series it reads, by modality, each with what for; whether
    it reads readers' annotations (SEG, RTSTRUCT, SR), the patient's imported data (expression, clinical, blood
    values, slide results) and a baseline study (longitudinal: its jobs are paired first). A job's inputs hold
    nothing else (`JobInputs.read_by`)."""

    modality: str
    context: tuple[tuple[str, str], ...] = ()  # (modality, what for)
    annotations: bool = False
    patient_data: bool = False
    baseline: bool = False

    def wants(self, series: SeriesFiles) -> bool:
        """Whether a series of the study is among what this pipeline reads."""
        if series.modality == self.modality or any(series.modality == m for m, _ in self.context):
            return True
        return self.annotations and any(f.sop_class_uid in ANNOTATION_SOP_CLASSES for f in series.files)

    def lines(self) -> tuple[str, ...]:
        return (
            f"analyses {self.modality} series",
            *(f"reads {modality} series: {why}" for modality, why in self.context),
            *(["reads readers' annotations (SEG, RTSTRUCT, SR)"] if self.annotations else []),
            *(["reads the patient's imported data (expression, clinical, blood, slides)"] if self.patient_data else []),
            *(["reads a baseline study (longitudinal: paired first)"] if self.baseline else []),
        )


@dataclass(frozen=True)
class Writes:
    """What a pipeline writes: the Series Number of its SR and of its SEG (None: it writes none), every version
    and SEG encoding moved on from them (`pipelines.output.numbers`); the record types its results leave in the
    index, each with its table; and the folder of its own migrations (an Alembic branch of its own creating those
    tables), None when the core's migrations made them (the built-in pipelines)."""

    sr_series_number: int
    seg_series_number: int | None = None
    records: tuple[RecordTable, ...] = ()
    migrations: Path | None = None

    def series_numbers(self) -> tuple[tuple[str, int], ...]:
        seg = (("SEG", self.seg_series_number),) if self.seg_series_number is not None else ()
        return (*seg, ("SR", self.sr_series_number))

    def undeclared(self, records: tuple[object, ...]) -> tuple[str, ...]:
        """The names of the types among `records` that are not declared here."""
        declared = {table.record for table in self.records}
        return tuple(sorted({type(r).__name__ for r in records if type(r) not in declared}))

    def lines(self) -> tuple[str, ...]:
        numbers = ", ".join(f"{kind} {number}" for kind, number in self.series_numbers())
        return (
            f"writes series {numbers}",
            *(f"keeps {table.describe()}" for table in self.records),
        )


@dataclass(frozen=True, eq=False)
class JobInputs:
    """Everything a job may read: the series its routing rule selected, the other received series of the study
    its pipeline reads (context: a CT for anatomy, readers' annotations), earlier reports to supersede, the
    patient's imported data when it reads them and, for longitudinal pipelines, the pairing decision with its
    baseline (`read_by` keeps to the pipeline's `Reads`)."""

    study_instance_uid: str
    selected: tuple[str, ...]
    series: tuple[SeriesFiles, ...]
    previous_reports: Mapping[str, PreviousReport] = field(default_factory=dict)
    patient: PatientData | None = None
    pairing: PairingContext | None = None
    job_id: int | None = None  # for the log; None outside the node (`immunode process`)
    version: ResultVersion = ResultVersion(1)  # which version of the results this job writes, and why
    # The SEG encodings the result destinations asked for: a report writes one SEG per encoding.
    seg_encodings: tuple[SegEncoding, ...] = (SegEncoding.FRACTIONAL,)

    @classmethod
    def read_by(
        cls,
        reads: Reads,
        study_instance_uid: str,
        selected: tuple[str, ...],
        series: tuple[SeriesFiles, ...],
        patient: PatientData | None = None,
        **values: Any,
    ) -> JobInputs:
        """A job's inputs holding what `reads` declares, no more: the selected series and the other series it
        reads; the patient's imported data when it reads them."""
        return cls(
            study_instance_uid,
            selected,
            tuple(s for s in series if s.series_instance_uid in selected or reads.wants(s)),
            patient=patient if reads.patient_data else None,
            **values,
        )

    def selected_series(self) -> tuple[SeriesFiles, ...]:
        return tuple(s for s in self.series if s.series_instance_uid in self.selected)

    def largest(
        self, modality: str, selected_only: bool = False, frame_of_reference_uid: str = ""
    ) -> SeriesFiles | None:
        """The series of a modality with the most files (optionally only selected ones, or in one frame of
        reference); None when the study has none."""
        pool = self.selected_series() if selected_only else self.series
        found = [
            s
            for s in pool
            if s.modality == modality
            and (not frame_of_reference_uid or s.frame_of_reference_uid == frame_of_reference_uid)
        ]
        return max(found, key=lambda s: len(s.files)) if found else None

    def instances(self, sop_classes: set[str] | frozenset[str]) -> dict[str, Path]:
        """SOP Instance UID → file of the study's instances of these SOP classes."""
        return {f.sop_instance_uid: f.path for s in self.series for f in s.files if f.sop_class_uid in sop_classes}


class Pipeline(abc.ABC, Generic[R]):
    """One analysis method: what it reads and writes, how a job becomes a typed result, how that result becomes
    SEG/SR and records."""

    name: ClassVar[str]  # the job's pipeline identity and the configuration block `pipelines.<name>`
    title: ClassVar[str]  # for people: `status`, logs
    settings_model: ClassVar[type[Strict]]
    reads: ClassVar[Reads]
    writes: ClassVar[Writes]
    # The heavy modules its methods import (PyTorch, SimpleITK, pyradiomics, highdicom): a warm worker imports
    # them before its first job.
    analysis_modules: ClassVar[tuple[str, ...]] = ()

    @property
    def modality(self) -> str:
        """The series it analyses: a routing rule naming it matches these by default."""
        return self.reads.modality

    @property
    def longitudinal(self) -> bool:
        """A job is paired with a baseline study before it runs."""
        return self.reads.baseline

    def warm(self) -> None:
        for module in self.analysis_modules:
            importlib.import_module(module)

    def settings(self, pipelines: Strict) -> Any:
        """This pipeline's block of the composed `pipelines` settings."""
        return getattr(pipelines, self.name)

    def pairing_settings(self, pipelines: Strict) -> PairingSettings:
        """Longitudinal pipelines: the rules that choose a baseline."""
        raise NotImplementedError(f"{self.name} is not longitudinal")

    def check_configuration(self, pipelines: Strict) -> tuple[str, ...]:
        """Check at start-up what the block names (weights, tables); raise `ConfigurationProblem` naming the
        key, else return lines for the log (which weights, their hashes)."""
        return ()

    @abc.abstractmethod
    def analyse(self, inputs: JobInputs, pipelines: Strict, workdir: Path) -> R:
        """The job's inputs → this pipeline's result. Raises `PipelineError` with the reason the job fails."""

    @abc.abstractmethod
    def report(self, inputs: JobInputs, result: R, pipelines: Strict, new_path: Callable[[], Path]) -> JobResult:
        """The result → validated SEG/SR files at paths from `new_path`, with the summary and index records."""

    def __repr__(self) -> str:
        return f"<pipeline {self.name}>"

    # Stateless: a pipeline is its class, wherever it was unpickled (a worker process gets the same registration).
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __reduce__(self) -> tuple:
        return (_instance, (type(self),))


def checked_card(key: str, path: Path) -> ModelCard:
    """The card of configured weights, their sha256 checked against it (no network is loaded: start-up stays
    light); ConfigurationProblem naming `key` otherwise."""
    from models.cards import verify_card
    from models.errors import ModelError

    try:
        return verify_card(path)
    except ModelError as error:
        raise ConfigurationProblem(key, str(error)) from None


def card_line(key: str, card: ModelCard) -> str:
    """What start-up reports of configured weights."""
    synthetic = " (SYNTHETIC demonstration weights)" if card.synthetic_training_data else ""
    return f"{key}: {card.name} {card.version} sha256 {card.sha256[:16]}{synthetic}"


def _instance(cls: type[Pipeline]) -> Pipeline:
    return cls()


@dataclass(frozen=True)
class Registry:
    """The pipelines a node runs, and the configuration blocks every pipeline may read (`shared`). Checked when
    made: names, Series Numbers (with their versions and SEG encodings), record types and tables are each one
    pipeline's own (`RegistryConflict` names the two pipelines)."""

    pipelines: tuple[Pipeline, ...]
    shared: tuple[tuple[str, type[Strict]], ...] = ()

    def __post_init__(self) -> None:
        _check_declared(self.pipelines)
        _check_names(self)
        _check_series_numbers(self.pipelines)
        _check_records(self.pipelines)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pipelines)

    @property
    def migrations(self) -> tuple[Path, ...]:
        """The folders of the pipelines' own migrations, for the index to apply with the core's."""
        return tuple(p.writes.migrations for p in self.pipelines if p.writes.migrations is not None)

    def get(self, name: str) -> Pipeline:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        raise UnknownPipeline(f"unknown pipeline {name!r} (registered: {', '.join(self.names)})")

    def with_pipeline(self, pipeline: Pipeline) -> Registry:
        return Registry(self.pipelines + (pipeline,), self.shared)

    def settings_model(self) -> type[Strict]:
        """The `pipelines` configuration section: the shared blocks and one block per pipeline."""
        return _settings_model(self)


def _check_declared(pipelines: tuple[Pipeline, ...]) -> None:
    for pipeline in pipelines:
        declared = {"reads": Reads, "writes": Writes}
        missing = [name for name, kind in declared.items() if not isinstance(getattr(pipeline, name, None), kind)]
        if missing:
            who = f"pipeline {pipeline.name} ({type(pipeline).__name__})"
            raise TypeError(f"{who} declares no {' and no '.join(missing)}")


def _check_names(registry: Registry) -> None:
    owners: dict[str, str] = {}
    named = [(name, f"shared block {name} ({model.__name__})") for name, model in registry.shared]
    named += [(p.name, f"pipeline {p.name} ({type(p).__name__})") for p in registry.pipelines]
    for name, owner in named:
        if name in owners:
            raise RegistryConflict(f"{owners[name]} and {owner}: the name {name!r} is registered twice")
        owners[name] = owner


def _check_series_numbers(pipelines: tuple[Pipeline, ...]) -> None:
    """No two declared Series Numbers may come to the same number, whatever the versions and SEG encodings."""
    taken: dict[int, tuple[str, str, int]] = {}  # remainder → (pipeline, SEG/SR, declared number)
    for pipeline in pipelines:
        for kind, number in pipeline.writes.series_numbers():
            for remainder in number_classes(number, kind == "SEG"):
                if remainder in taken:
                    other, other_kind, other_number = taken[remainder]
                    raise RegistryConflict(
                        f"pipelines {other} and {pipeline.name}: {other_kind} series {other_number} and {kind} series "
                        f"{number} would take the same Series Numbers (each version moves a number on by "
                        f"{SERIES_NUMBER_STEP}, each SEG encoding by a multiple of it): declare a number of another "
                        f"last digit"
                    )
                taken[remainder] = (pipeline.name, kind, number)


def _check_records(pipelines: tuple[Pipeline, ...]) -> None:
    """A record type and a table (with its entries table) belong to one pipeline."""
    owners: dict[object, str] = {}
    for pipeline in pipelines:
        for table in pipeline.writes.records:
            keys = [("record type", table.record), ("table", table.table)]
            if table.entries is not None:
                keys.append(("table", table.entries.table))
            for what, key in keys:
                name = key.__name__ if isinstance(key, type) else key
                if (what, key) in owners and owners[(what, key)] != pipeline.name:
                    raise RegistryConflict(
                        f"pipelines {owners[(what, key)]} and {pipeline.name}: both write {what} {name}"
                    )
                owners[(what, key)] = pipeline.name


@functools.cache
def _settings_model(registry: Registry) -> type[Strict]:
    blocks: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in registry.shared}
    for pipeline in registry.pipelines:
        blocks[pipeline.name] = (pipeline.settings_model, Field(default_factory=pipeline.settings_model))
    return create_model("PipelineSettings", __base__=Strict, **blocks)
