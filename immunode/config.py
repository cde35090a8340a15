"""The one configuration model of the node, loaded once from `config.yaml`.

Each layer owns its blocks (`dicom_node.settings`, `storage.settings`, each pipeline's `settings_model`);
this module composes them into `Settings`, with one `pipelines.<name>` block per pipeline of the registry
(`pipelines.builtin.BUILTIN`, or a registry passed to `parse_settings`/`load_settings`). Every section
forbids unknown keys so that a typo stops start-up with a message naming the key instead of being silently
ignored. Defaults are the embedded defaults: a node started without a file runs on SQLite and a local
storage folder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from common.passwords import PASSWORD_HASH_PATTERN
from common.settings import Strict, valid_regex
from common.states import SegEncoding
from dicom_node.settings import (
    AllowedPeer,
    AnyDestination,
    AnyQueryRetrieve,
    Destination,
    DicomWebDestination,
    DispatchSettings,
    NodeSettings,
    PeerSettings,
    QueryRetrieveSettings,
    is_loopback,
)
from pipelines.builtin import BUILTIN
from pipelines.registry import Registry
from storage.settings import DatabaseSettings, StorageSettings


class ConfigError(Exception):
    """The configuration file cannot be used; the message names every offending key."""


class SeriesMatch(Strict):
    modality: str | None = None
    # Regular expressions matched against the stored series attributes of the same name.
    series_description: str | None = None
    manufacturer: str | None = None

    @field_validator("series_description", "manufacturer")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        return None if value is None else valid_regex(value)


class RoutingRule(Strict):
    name: str
    pipeline: str  # a registered pipeline's name
    # The rule fires when at least one series of the study matches; none given: the pipeline's modality.
    series: SeriesMatch | None = None
    # Names of `destinations` this rule's results go to; None: every destination with receives_results: true.
    destinations: list[str] | None = None

    @field_validator("pipeline")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        registry = (info.context or {}).get("registry", BUILTIN)
        if value not in registry.names:
            raise ValueError(f"unknown pipeline {value!r}; registered: {', '.join(registry.names)}")
        return value


class RoutingSettings(Strict):
    study_stable_s: float = Field(120.0, ge=0)
    # A study analysed before that then receives only readers' annotations (SEG, RTSTRUCT, SR) is complete after
    # this much quiet: the reader's version of the results goes out within seconds (reader in the loop).
    annotation_stable_s: float = Field(5.0, ge=0)
    poll_interval_s: float = Field(5.0, gt=0)
    rules: list[RoutingRule] = Field(
        default_factory=lambda: [
            RoutingRule(name="pet-lesions", pipeline="pet_quant", series=SeriesMatch(modality="PT")),
            RoutingRule(name="ct-radiomics", pipeline="ct_radiomics", series=SeriesMatch(modality="CT")),
            RoutingRule(name="histology", pipeline="histology", series=SeriesMatch(modality="SM")),
        ]
    )


class WorkerSettings(Strict):
    # local: a pool of worker processes on this machine; dask: a Dask distributed cluster (`dask scheduler` and
    # `dask worker` from the `distributed` package, on machines that reach the index and mount the storage root).
    engine: Literal["local", "dask"] = "local"
    dask_scheduler: str | None = None  # e.g. tcp://10.0.0.7:8786
    dask_connect_timeout_s: float = Field(5.0, gt=0)
    processes: int = Field(1, ge=1, le=64)  # local engine; with dask, the cluster's worker threads count
    # Local engine: the worker processes (each ~0.5 GB once PyTorch and the analysis code are imported) start
    # with the first job and are returned after `idle_release_s` without one (0: kept once started). With
    # `warm_at_start` they start with the node instead, so that the first job does not wait for the imports.
    warm_at_start: bool = False
    idle_release_s: float = Field(300.0, ge=0)
    # A job past this much CPU time is killed by the kernel (RLIMIT_CPU) and marked failed (local engine; on a
    # Dask cluster the workers' own --memory-limit applies and no CPU limit).
    job_cpu_limit_s: int = Field(1800, ge=10)
    # Address-space limit per job process; 0 disables it (local engine).
    job_memory_limit_mb: int = Field(8192, ge=0)
    max_attempts: int = Field(2, ge=1)
    # A finished job's outcome is written to the index with retries (back-off) for this long while the index cannot
    # be reached; past it the job goes back to the queue when the index answers again (its node hands it back).
    record_retry_s: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _dask_needs_a_scheduler(self) -> WorkerSettings:
        if self.engine == "dask" and not self.dask_scheduler:
            raise ValueError("engine dask needs dask_scheduler (the scheduler's address, e.g. tcp://host:8786)")
        return self


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: Path | None = None
    # text: one line a record; json: one JSON object a line (time, level, process, logger, message), for collectors.
    format: Literal["text", "json"] = "text"


class MonitoringSettings(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8104, ge=0, le=65535)  # 0: a free port
    refresh_s: int = Field(10, ge=1)  # the status page reloads itself this often
    # The study list (page and `immunode status`) shows patient names only when true; Patient IDs always.
    show_patient_names: bool = False
    # The names requests may give in their Host header (and their Origin): a page reached by any other name is
    # refused (DNS rebinding). Default: the address bound, with localhost names on a loopback bind; on 0.0.0.0 or
    # :: the machine's name and addresses and localhost. A name that is not localhost needs username/password_hash.
    allowed_hosts: list[str] | None = None
    # Required when `host` or an allowed host is not a loopback address; `immunode hash-password` makes the hash.
    username: str | None = None
    password_hash: str | None = Field(None, pattern=PASSWORD_HASH_PATTERN)

    @model_validator(mode="after")
    def _authentication_off_localhost(self) -> MonitoringSettings:
        if not self.enabled or (self.username is not None and self.password_hash is not None):
            return self
        if not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not localhost: set username and password_hash (immunode hash-password)"
            )
        outside = [name for name in self.allowed_hosts or () if not is_loopback(name)]
        if outside:
            raise ValueError(
                f"allowed_hosts {outside} are not localhost: set username and password_hash (immunode hash-password)"
            )
        return self


LOCALHOST_NAMES = ("localhost", "127.0.0.1", "::1")


class Settings(Strict):
    """The node's configuration. `registry` names the pipelines whose blocks `pipelines` holds; a registry other
    than the built-in one gets its own subclass (`settings_model`)."""

    registry: ClassVar[Registry] = BUILTIN

    node: NodeSettings = NodeSettings()
    peers: PeerSettings = PeerSettings(allowed=[AllowedPeer(ae_title="STORESCU", host="127.0.0.1")])
    # DIMSE (C-STORE) and DICOMweb (STOW-RS, `protocol: dicomweb`) destinations, by unique name.
    destinations: list[AnyDestination] = Field(default_factory=list)
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    routing: RoutingSettings = RoutingSettings()
    workers: WorkerSettings = WorkerSettings()
    dispatch: DispatchSettings = DispatchSettings()
    pipelines: BUILTIN.settings_model() = Field(default_factory=BUILTIN.settings_model())  # type: ignore[valid-type]
    # Where missing baselines are found: C-FIND/C-MOVE (DIMSE), or QIDO-RS/WADO-RS (`protocol: dicomweb`).
    query_retrieve: AnyQueryRetrieve | None = None
    logging: LoggingSettings = LoggingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @model_validator(mode="after")
    def _retrieve_peer_may_send(self) -> Settings:
        peer = self.query_retrieve
        if isinstance(peer, QueryRetrieveSettings) and not self.peers.accept_any:
            if not any(p.ae_title == peer.ae_title for p in self.peers.allowed):
                raise ValueError(
                    f"query_retrieve.ae_title {peer.ae_title!r} must also be in peers.allowed, "
                    "or the baselines it sends by C-MOVE are refused"
                )
        return self

    @model_validator(mode="after")
    def _dask_needs_a_shared_index(self) -> Settings:
        if self.workers.engine == "dask" and self.database_url.startswith("sqlite"):
            raise ValueError(
                "workers.engine dask: the workers on other machines need the index too: use PostgreSQL (database.url)"
            )
        return self

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _rules_name_known_destinations(self) -> Settings:
        names = {d.name for d in self.destinations}
        problems = []
        named: dict[str, list[str] | None] = {}
        for number, rule in enumerate(self.routing.rules):
            if named.setdefault(rule.name, rule.destinations) != rule.destinations:
                problems.append(f"routing.rules.{number}: rules named {rule.name!r} name different destinations")
            unknown = [name for name in rule.destinations or () if name not in names]
            if unknown:
                problems.append(
                    f"routing.rules.{number}.destinations: unknown destination(s) {', '.join(map(repr, unknown))}"
                    f" (configured: {', '.join(sorted(names)) or 'none'})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.root / 'index.sqlite3').resolve()}"

    def result_destinations(self, rule: str | None = None) -> list[Destination | DicomWebDestination]:
        """Where the results of a job of routing rule `rule` go: the destinations the rule names, else every
        destination with receives_results: true (a rule no longer configured gets the latter)."""
        named = next((r.destinations for r in self.routing.rules if r.name == rule), None)
        if named is not None:
            return [d for d in self.destinations if d.name in named]
        return [d for d in self.destinations if d.receives_results]

    def seg_encodings(self, rule: str | None = None) -> tuple[SegEncoding, ...]:
        """The SEG encodings the result destinations of rule `rule` asked for (a job writes one SEG per
        encoding), in the order of SegEncoding; the default alone when no destination receives its results."""
        asked = {d.seg_encoding for d in self.result_destinations(rule)} or {SegEncoding.FRACTIONAL}
        return tuple(e for e in SegEncoding if e in asked)

    def __reduce__(self) -> tuple:
        # Worker processes get the settings by pickle: rebuilt from their values under the same registry.
        return (_restore, (type(self).registry, self.model_dump(mode="json")))


def _restore(registry: Registry, values: dict[str, Any]) -> Settings:
    return settings_model(registry).model_validate(values, context={"registry": registry})


@functools.cache
def settings_model(registry: Registry) -> type[Settings]:
    """The configuration model of a node running `registry`'s pipelines."""
    if registry == BUILTIN:
        return Settings
    pipelines = registry.settings_model()
    model = create_model("Settings", __base__=Settings, pipelines=(pipelines, Field(default_factory=pipelines)))
    model.registry = registry
    return model


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_settings(data: object, source: str = "config", registry: Registry = BUILTIN) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return settings_model(registry).model_validate(data, context={"registry": registry})
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error)) from None


def load_settings(path: Path | None, registry: Registry = BUILTIN) -> Settings:
    """Load and validate a config file; None gives the embedded defaults."""
    if path is None:
        return settings_model(registry)()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_settings(data, str(path), registry)
