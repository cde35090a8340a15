"""The pipeline registry: what a pipeline is (`Pipeline`, one protocol) and which pipelines a node runs
(`Registry`). Configuration, routing, job states, the flow and `immunode status` read the registry; no module
compares pipeline names.

A pipeline is its package, one `Pipeline` subclass registered here (`pipelines.builtin`, or a registry a
site or a test extends with `Registry.with_pipeline`), its configuration block (`settings_model`, composed
under `pipelines.<name>`) and its tests. What it declares:

- `modality`: the series it analyses (the default series match of a routing rule naming it);
- `longitudinal`: whether a job first goes through the pairing stage for a baseline (`pairing_settings`);
- `analyse`: a job's inputs (`JobInputs`) → its own typed, frozen result;
- `report`: that result → validated SEG/SR files (through `pipelines.output`) and the `JobResult` the node
  records;
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

from common.settings import Strict
from common.states import PairingOutcome, SegEncoding
from common.types import Baseline, JobResult, PatientData, PreviousReport, ResultVersion, SeriesFiles
from pipelines.errors import ConfigurationProblem, UnknownPipeline
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


@dataclass(frozen=True, eq=False)
class JobInputs:
    """Everything a job may read: the series its routing rule selected, every other received series of the
    study (context: a CT for anatomy, readers' annotations), earlier reports to supersede, the patient's
    imported data and, for longitudinal pipelines, the pairing decision with its baseline."""

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
    """One analysis method: what it wants, how a job becomes a typed result, how that result becomes SEG/SR."""

    name: ClassVar[str]  # the job's pipeline identity and the configuration block `pipelines.<name>`
    title: ClassVar[str]  # for people: `status`, logs
    settings_model: ClassVar[type[Strict]]
    modality: ClassVar[str]  # the series it analyses: a routing rule naming it matches these by default
    longitudinal: ClassVar[bool] = False  # a job is paired with a baseline study before it runs
    # The heavy modules its methods import (PyTorch, SimpleITK, pyradiomics, highdicom): a warm worker imports
    # them before its first job.
    analysis_modules: ClassVar[tuple[str, ...]] = ()

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
    """The pipelines a node runs, and the configuration blocks every pipeline may read (`shared`)."""

    pipelines: tuple[Pipeline, ...]
    shared: tuple[tuple[str, type[Strict]], ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.pipelines] + [name for name, _ in self.shared]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"pipeline or block registered twice: {', '.join(repeated)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pipelines)

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


@functools.cache
def _settings_model(registry: Registry) -> type[Strict]:
    blocks: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in registry.shared}
    for pipeline in registry.pipelines:
        blocks[pipeline.name] = (pipeline.settings_model, Field(default_factory=pipeline.settings_model))
    return create_model("PipelineSettings", __base__=Strict, **blocks)
