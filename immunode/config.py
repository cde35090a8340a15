"""The one configuration model of the node, loaded once from `config.yaml`.

Every section forbids unknown keys so that a typo stops start-up with a message naming the key
instead of being silently ignored. Defaults are the embedded defaults: a node started without a file
runs on SQLite and a local storage folder.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # DICOM AE VR: 16 chars, no backslash or control chars
AeTitle = Annotated[str, Field(pattern=AE_TITLE_PATTERN)]


class ConfigError(Exception):
    """The configuration file cannot be used; the message names every offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TlsVersion = Literal["1.2", "1.3"]


class TlsServerSettings(Strict):
    """DICOM over TLS on its own port, beside (or instead of) plain DICOM."""

    port: int = Field(2762, ge=1, le=65535)
    certificate: Path  # PEM certificate (chain) of this node
    private_key: Path  # PEM private key of that certificate, readable by the service user only
    # CA certificates (PEM) that client certificates must chain to.
    ca_certificates: Path | None = None
    # none: no client certificate asked; optional: verified when sent; required: no certificate, no association.
    client_certificates: Literal["none", "optional", "required"] = "required"
    minimum_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _ca_for_clients(self) -> TlsServerSettings:
        if self.client_certificates != "none" and self.ca_certificates is None:
            raise ValueError("ca_certificates is required when client_certificates is optional or required")
        return self


class TlsClientSettings(Strict):
    """TLS when this node connects to a peer (destination PACS, query/retrieve peer)."""

    # CA certificates (PEM) the peer's certificate must chain to; None: the system's trust store.
    ca_certificates: Path | None = None
    # This node's client certificate and key, for peers that require one.
    certificate: Path | None = None
    private_key: Path | None = None
    # The name the peer's certificate must carry; None: the configured host.
    server_hostname: str | None = None
    verify_hostname: bool = True
    minimum_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _key_with_certificate(self) -> TlsClientSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class NodeSettings(Strict):
    ae_title: AeTitle = "IMMUNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    # Plain (unencrypted) DICOM on `port`; false leaves only the TLS port open.
    plain: bool = True
    tls: TlsServerSettings | None = None
    # Storage SOP classes offered (keywords such as CTImageStorage, or UIDs); None: every storage class.
    storage_sop_classes: list[str] | None = None
    # Association requests whose called AE title is not `ae_title` are rejected unless this is true.
    accept_any_called_ae: bool = False
    # Negotiated associations at once; requests beyond are rejected as "local limit exceeded" (transient).
    max_associations: int = Field(10, ge=1, le=1000)
    # Connections that have not yet sent an association request; beyond this the oldest is dropped.
    max_pending_connections: int = Field(10, ge=1, le=1000)
    # Idle association, and a PDU not received whole within this time, end the connection.
    network_timeout_s: float = Field(60.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    # Largest P-DATA PDU accepted (announced to peers); larger declared lengths end the connection.
    max_pdu_bytes: int = Field(1048576, ge=4096, le=64 * 1024 * 1024)
    # A deflated data set may inflate to at most this much; beyond, the instance is refused (0xA700).
    max_inflated_mb: int = Field(512, ge=1)

    @field_validator("storage_sop_classes")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            from pynetdicom.sop_class import _STORAGE_CLASSES

            known = set(_STORAGE_CLASSES) | {str(uid) for uid in _STORAGE_CLASSES.values()}
            unknown = [item for item in value if item not in known]
            if unknown:
                raise ValueError(f"not storage SOP classes: {', '.join(unknown[:5])}")
        return value

    @model_validator(mode="after")
    def _something_listens(self) -> NodeSettings:
        if not self.plain and self.tls is None:
            raise ValueError("plain is false and tls is not set: the node would not listen at all")
        if self.tls is not None and self.plain and self.tls.port == self.port:
            raise ValueError("tls.port must differ from port while plain DICOM is on")
        return self


class AllowedPeer(Strict):
    ae_title: AeTitle
    # IP address or network (CIDR); None accepts the AE title from any host.
    host: str | None = None

    @field_validator("host")
    @classmethod
    def _valid_network(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_network(value, strict=False)
        return value


class PeerSettings(Strict):
    # When true any calling AE may store (for a closed lab network); the default is the allow-list.
    accept_any: bool = False
    allowed: list[AllowedPeer] = Field(default_factory=list)


class Destination(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ae_title: AeTitle
    host: str
    port: int = Field(ge=1, le=65535)
    receives_results: bool = True
    tls: TlsClientSettings | None = None  # None: plain DICOM


class StorageSettings(Strict):
    root: Path = Path("./immunode-data")
    # Stores are refused with 0xA700 (out of resources) below this much free disk.
    min_free_mb: int = Field(200, ge=0)
    # Files and folders the node creates (storage root, SQLite index, log) are readable by the service user
    # only (umask 077, root folder mode 0700); false leaves the process umask as it is.
    private: bool = True


class DatabaseSettings(Strict):
    # None: SQLite file `index.sqlite3` under the storage root. PostgreSQL: postgresql+psycopg://user:pw@host/db
    url: str | None = None


class SeriesMatch(Strict):
    modality: str | None = None
    # Regular expressions matched against the stored series attributes of the same name.
    series_description: str | None = None
    manufacturer: str | None = None

    @field_validator("series_description", "manufacturer")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"invalid regular expression: {error}") from None
        return value


class RoutingRule(Strict):
    name: str
    pipeline: Literal["pet_quant", "ct_radiomics"]
    # The rule fires when at least one series of the study matches.
    series: SeriesMatch = SeriesMatch(modality="PT")


class RoutingSettings(Strict):
    study_stable_s: float = Field(120.0, ge=0)
    poll_interval_s: float = Field(5.0, gt=0)
    rules: list[RoutingRule] = Field(
        default_factory=lambda: [
            RoutingRule(name="pet-lesions", pipeline="pet_quant"),
            RoutingRule(name="ct-radiomics", pipeline="ct_radiomics", series=SeriesMatch(modality="CT")),
        ]
    )


class WorkerSettings(Strict):
    processes: int = Field(1, ge=1, le=64)
    # A job past this much CPU time is killed by the kernel (RLIMIT_CPU) and marked failed.
    job_cpu_limit_s: int = Field(1800, ge=10)
    # Address-space limit per job process; 0 disables it.
    job_memory_limit_mb: int = Field(8192, ge=0)
    max_attempts: int = Field(2, ge=1)


class DispatchSettings(Strict):
    max_attempts: int = Field(6, ge=1)
    backoff_initial_s: float = Field(30.0, ge=0)
    backoff_max_s: float = Field(3600.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)


class CytActSettings(Strict):
    """Lesion CytAct prediction and the patient-level biomarkers of the PET immune-profiling method."""

    enabled: bool = True
    # None: the shipped synthetic demonstration weights (models/weights/cytact-synthetic-v1.pt).
    weights: Path | None = None
    # Patients whose minimum lesion CytAct is below this value form the "low" group (the method's cut-off).
    low_group_cutoff: float = -0.107
    # Variance of lesion CytAct above which a patient's lesions are "heterogeneous" (our documented choice).
    heterogeneity_variance_cutoff: float = Field(0.1, ge=0)


class PhysiologicalSettings(Strict):
    """Physiological uptake excluded from automatic detection (see pipelines/physiological.py for the rules)."""

    enabled: bool = True
    brain: bool = True
    myocardium: bool = True
    kidneys: bool = True
    bladder: bool = True
    ureters: bool = True
    head_and_neck_pairs: bool = True  # mirrored foci below the brain: tonsils, salivary glands, vocal cords
    brown_fat: bool = True  # with CT: foci in fat
    bowel: bool = True  # with CT: foci with gas around them below the lungs
    diffuse_organs: bool = True  # large foci without a focal peak (liver, spleen, marrow)
    brain_min_ml: float = Field(250.0, gt=0)
    brain_from_top_mm: float = Field(200.0, gt=0)
    myocardium_hollowness: float = Field(0.2, gt=0)
    body_suv: float = Field(0.3, gt=0)  # SUV above which a voxel counts as inside the body (midline)
    pair_max_ratio: float = Field(1.6, ge=1)  # mirrored head-and-neck foci within this SUVmax ratio are normal,
    pair_max_suv: float = Field(7.0, gt=0)  # ... unless hotter than this (nodes)
    pair_weaker_fraction: float = Field(0.6, gt=0, le=1)  # ... and the weak side of a lopsided pair below this
    head_and_neck_depth_mm: float = Field(250.0, gt=0)  # without a CT: the zone reaches this far below the brain
    # A focus of at most 2 ml and this SUVmax within 10 mm of an organ left out is a piece of that organ.
    faint_suv: float = Field(3.5, gt=0)


class PetQuantSettings(Strict):
    """Parameters of the PET lesion quantification (adaptive threshold after the PET immune-profiling method)."""

    detection_suv_threshold: float = Field(2.5, gt=0)
    # Connected uptake is split into foci where it dips below this fraction of the lower of two peaks.
    split_saddle_fraction: float = Field(0.6, gt=0, le=1)
    # Low-grade uptake (below this times detection_suv_threshold) around a small hot core is that lesion's
    # background (a node on avid muscle), not part of the lesion.
    plateau_suv_factor: float = Field(1.5, gt=1)
    # Automatic detection: a candidate whose SUVmax is below this times its background is not focal uptake.
    min_lesion_contrast: float = Field(2.0, ge=1)
    # No lesion smaller than this is reported (after the adaptive threshold), whatever found it.
    min_lesion_volume_ml: float = Field(0.5, ge=0)
    max_lesions: int = Field(50, ge=1)
    beta: float = Field(0.3, gt=0, le=1)
    i70_fraction: float = Field(0.7, gt=0, lt=1)
    # Background = mean SUV of a shell between these distances from the detected region, excluding
    # voxels of any detected region (the method leaves the region open; this is our documented choice).
    background_inner_mm: float = Field(10.0, ge=0)
    background_outer_mm: float = Field(20.0, gt=0)
    peak_sphere_ml: float = Field(1.0, gt=0)
    # Semi-automatic mode: how far from a reader's seed (a point) the lesion maximum is looked for ...
    seed_search_mm: float = Field(10.0, gt=0)
    # ... and by how much a reader's region (RTSTRUCT ROI, SEG segment) is widened for the threshold (a contour
    # drawn on the CT, or on a grid of its own, may cut the edge of the PET uptake).
    reader_margin_mm: float = Field(5.0, ge=0)
    physiological: PhysiologicalSettings = PhysiologicalSettings()
    cytact: CytActSettings = CytActSettings()

    @model_validator(mode="after")
    def _shell_is_a_shell(self) -> PetQuantSettings:
        if self.background_outer_mm <= self.background_inner_mm:
            raise ValueError("background_outer_mm must be greater than background_inner_mm")
        return self


class ResponseModelSettings(Strict):
    """Patient-level response models added to the PET report when the patient has imported data."""

    # Trained weights (with their .card.json); None: that model is not run and the SR says so.
    expression_weights: Path | None = None
    fusion_weights: Path | None = None


def _valid_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"invalid regular expression: {error}") from None
    return value


class AnnotationSettings(Strict):
    """Readers' annotations (RTSTRUCT ROIs, SEG segments): which are lesions, which are lymph nodes."""

    # RTSTRUCT ROIs of these RT ROI Interpreted Types are not lesions (a GTV always is one).
    non_lesion_roi_types: list[str] = Field(
        default_factory=lambda: [
            "ORGAN",
            "EXTERNAL",
            "PTV",
            "CTV",
            "AVOIDANCE",
            "BOLUS",
            "SUPPORT",
            "FIXATION",
            "CONTROL",
            "REGISTRATION",
            "ISOCENTER",
            "MARKER",
            "DOSE_REGION",
            "CONTRAST_AGENT",
            "CAVITY",
            "BRACHY_CHANNEL",
            "BRACHY_ACCESSORY",
            "BRACHY_SRC_APP",
            "BRACHY_CHNL_SHLD",
            "TREATED_VOLUME",
            "IRRAD_VOLUME",
        ]  # fmt: skip
    )
    # An ROI without a type, or a SEG segment, labelled like this is a lesion ...
    lesion_label: str = r"(?i)(gtv|\bmet|metast|lesion|tumou?r|nodul|mass|\bnode|\bLN\b|primary)"
    # ... and otherwise, labelled like this, an organ, the body outline or a planning volume.
    non_lesion_label: str = (
        r"(?i)^(z_|opt|ptv|ctv|itv|prv|body|external|skin|outline|patient|couch|table)|"
        r"(lung|heart|cord|spinal|esophag|oesophag|trachea|bronch|liver|kidney|spleen|stomach|bowel|"
        r"bladder|rectum|femur|brain|stem|chiasm|optic|lens|eye|cochlea|parotid|mandible|larynx|thyroid|"
        r"pharyn|constrictor|cavity|bone|rib|sternum|vertebra|muscle|aorta|vessel|artery|vein|plexus)"
    )
    # Labels matching this are lymph nodes (RECIST 1.1 short-axis rule).
    lymph_node_label: str = r"(?i)(lymph|\bnode|\bLN\b)"

    @field_validator("lymph_node_label", "lesion_label", "non_lesion_label")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _valid_regex(value)

    @field_validator("non_lesion_roi_types")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [item.strip().upper() for item in value]


class PairingSettings(Strict):
    """How a follow-up CT finds its baseline (same PatientID and IssuerOfPatientID, CT, within the window)."""

    window_min_weeks: float = Field(6.0, ge=0)  # the baseline is at least this long before the follow-up ...
    window_max_weeks: float = Field(16.0, gt=0)  # ... and at most this long
    # With an imported therapy start date: the baseline must be on or before it, the follow-up after it.
    use_therapy_start: bool = True
    # How long a follow-up waits for a baseline being retrieved or analysed before it runs without one.
    baseline_wait_s: float = Field(3600.0, ge=0)

    @model_validator(mode="after")
    def _window_is_a_window(self) -> PairingSettings:
        if self.window_max_weeks <= self.window_min_weeks:
            raise ValueError("window_max_weeks must be greater than window_min_weeks")
        return self


class RegistrationSettings(Strict):
    """Follow-up (T1) CT registered to baseline (T0): rigid, then B-spline where rigid leaves a poor fit."""

    deformable: Literal["auto", "always", "never"] = "auto"
    # auto: deformable when the correlation of the rigidly aligned CTs (within the body) stays below this.
    deformable_below_correlation: float = Field(0.9, gt=0, le=1)
    # A follow-up lesion matches the baseline lesion whose mapped centroid is nearest, within this distance.
    match_distance_mm: float = Field(20.0, gt=0)


class CtRadiomicsSettings(Strict):
    """CT radiomics, delta-radiomics and resistance pattern of the longitudinal CT method."""

    # An annotation label (RTSTRUCT ROI name, SEG segment label) matching this marks the primary tumour;
    # every other lesion is a metastasis.
    primary_label: str = "(?i)(primary|^GTV)"
    # When no label names a primary: "largest" (the largest lesion by volume) or "none" (all metastases).
    primary_rule: Literal["largest", "none"] = "largest"
    pet_fallback: bool = True  # without CT annotations: PET lesions of the same study on the CT grid
    max_lesions: int = Field(20, ge=1)
    extraction_processes: int = Field(2, ge=1, le=64)  # worker processes for the volumes of one study
    per_lesion_features: bool = True  # also extract each lesion on its own (besides P and M)
    # A matched lesion is progressive when its RECIST diameter grew by at least this much ...
    progression_percent: float = Field(20.0, ge=0)
    progression_min_mm: float = Field(5.0, ge=0)  # ... and by at least this many millimetres
    oligo_max_lesions: int = Field(3, ge=1)  # new + progressive lesions up to this many: oligo-progression
    # The published delta-radiomics signature (CSV as ../shared/data/delta_radiomics_published.csv):
    # its features are reported in the follow-up SR with the nearer published group median.
    published_signature: Path | None = None
    # A classifier from `immunode train ar-signature` (.json with its .card.json); None: no class in the SR.
    ar_signature: Path | None = None
    pairing: PairingSettings = PairingSettings()
    registration: RegistrationSettings = RegistrationSettings()

    @field_validator("primary_label")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _valid_regex(value)


class PipelineSettings(Strict):
    annotations: AnnotationSettings = AnnotationSettings()
    pet_quant: PetQuantSettings = PetQuantSettings()
    response: ResponseModelSettings = ResponseModelSettings()
    ct_radiomics: CtRadiomicsSettings = CtRadiomicsSettings()


class QueryRetrieveSettings(Strict):
    """A PACS asked for missing baselines (C-FIND at study level, then C-MOVE to this node)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(30.0, gt=0)
    tls: TlsClientSettings | None = None  # None: plain DICOM


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: Path | None = None


class Settings(Strict):
    node: NodeSettings = NodeSettings()
    peers: PeerSettings = PeerSettings(allowed=[AllowedPeer(ae_title="STORESCU", host="127.0.0.1")])
    destinations: list[Destination] = Field(default_factory=list)
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    routing: RoutingSettings = RoutingSettings()
    workers: WorkerSettings = WorkerSettings()
    dispatch: DispatchSettings = DispatchSettings()
    pipelines: PipelineSettings = PipelineSettings()
    query_retrieve: QueryRetrieveSettings | None = None
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _retrieve_peer_may_send(self) -> Settings:
        peer = self.query_retrieve
        if peer is not None and not self.peers.accept_any:
            if not any(p.ae_title == peer.ae_title for p in self.peers.allowed):
                raise ValueError(
                    f"query_retrieve.ae_title {peer.ae_title!r} must also be in peers.allowed, "
                    "or the baselines it sends by C-MOVE are refused"
                )
        return self

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(duplicates)}")
        return self

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.root / 'index.sqlite3').resolve()}"

    def result_destinations(self) -> list[Destination]:
        return [d for d in self.destinations if d.receives_results]


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_settings(data: object, source: str = "config") -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error)) from None


def load_settings(path: Path | None) -> Settings:
    """Load and validate a config file; None gives the embedded defaults."""
    if path is None:
        return Settings()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_settings(data, str(path))
