"""Configuration blocks of the networking layer: the node's listeners (DICOM, DICOM over TLS, the DICOMweb STOW-RS
endpoint), the peers allowed to store, the destinations results go to (DIMSE or DICOMweb), dispatch retries and
the query/retrieve peer (C-FIND/C-MOVE or QIDO-RS/WADO-RS). Composed into `immunode.config.Settings`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from common.passwords import PASSWORD_HASH_PATTERN
from common.settings import Strict
from common.states import SegEncoding

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # DICOM AE VR: 16 chars, no backslash or control chars


AeTitle = Annotated[str, Field(pattern=AE_TITLE_PATTERN)]


def _network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)  # ValueError names what is wrong
    return value


Network = Annotated[str, AfterValidator(_network)]  # an IP address or network (CIDR)


TlsVersion = Literal["1.2", "1.3"]


class TlsServerFiles(Strict):
    """A TLS listener's certificate, key and client-certificate policy."""

    certificate: Path  # PEM certificate (chain) of this node
    private_key: Path  # PEM private key of that certificate, readable by the service user only
    # CA certificates (PEM) that client certificates must chain to.
    ca_certificates: Path | None = None
    # none: no client certificate asked; optional: verified when sent; required: no certificate, no association.
    client_certificates: Literal["none", "optional", "required"] = "required"
    minimum_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _ca_for_clients(self) -> TlsServerFiles:
        if self.client_certificates != "none" and self.ca_certificates is None:
            raise ValueError("ca_certificates is required when client_certificates is optional or required")
        return self


class TlsServerSettings(TlsServerFiles):
    """DICOM over TLS on its own port, beside (or instead of) plain DICOM."""

    port: int = Field(2762, ge=1, le=65535)


class HttpsServerSettings(TlsServerFiles):
    """HTTPS for the DICOMweb endpoint (on its own port: `node.dicomweb.port`). Clients authenticate by password or
    token; a client certificate is asked only when configured."""

    client_certificates: Literal["none", "optional", "required"] = "none"


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


class DicomWebClient(Strict):
    """A client allowed to store by STOW-RS: authenticated by HTTP Basic (username and password_hash, made by
    `immunode hash-password`) or by a bearer token (token_sha256: the SHA-256 of the token, hex), optionally only
    from `host` (an address or network)."""

    # Recorded as the calling AE title of what it stores and in the audit trail.
    name: AeTitle
    username: str | None = Field(None, min_length=1, max_length=128)
    password_hash: str | None = Field(None, pattern=PASSWORD_HASH_PATTERN)
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    host: Network | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> DicomWebClient:
        basic = self.username is not None or self.password_hash is not None
        if basic and (self.username is None or self.password_hash is None):
            raise ValueError("username and password_hash go together")
        if basic == (self.token_sha256 is not None):
            raise ValueError("give either username and password_hash (HTTP Basic) or token_sha256 (bearer token)")
        return self


class DicomWebServerSettings(Strict):
    """The DICOMweb STOW-RS endpoint (POST /studies, POST /studies/{uid}): its own HTTP(S) listener, off unless
    configured. What it stores passes the same checks and is stored as durably as by C-STORE."""

    host: str = "0.0.0.0"
    port: int = Field(8105, ge=0, le=65535)  # 0: a free port
    tls: HttpsServerSettings | None = None  # None: plain HTTP (credentials then travel in clear)
    # When true anyone who reaches the port may store (a closed lab network); the default is `clients`.
    accept_any: bool = False
    clients: list[DicomWebClient] = Field(default_factory=list)
    # Larger request bodies are refused (413) before they are read.
    max_request_mb: int = Field(4096, ge=1)
    # Requests handled at once; more are answered 503 with Retry-After.
    max_concurrent_requests: int = Field(4, ge=1, le=256)
    # A connection idle (no byte) this long is closed; a request body cut short is refused whole (400).
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _someone_may_store(self) -> DicomWebServerSettings:
        if not self.accept_any and not self.clients:
            raise ValueError("no client may store: list clients (name with username/password_hash or token_sha256)"
                             " or set accept_any: true")
        names = [c.name for c in self.clients]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"client names must be unique, repeated: {', '.join(repeated)}")
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
    # The DICOMweb STOW-RS endpoint; None: off.
    dicomweb: DicomWebServerSettings | None = None
    # C-STOREs received, answered and written to disk by the node's own P-DATA path (dicom_node.fast_store);
    # false: through pynetdicom's DIMSE provider and storage service class (several times the CPU per instance).
    fast_store: bool = True

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
    host: Network | None = None


class PeerSettings(Strict):
    # When true any calling AE may store (for a closed lab network); the default is the allow-list.
    accept_any: bool = False
    allowed: list[AllowedPeer] = Field(default_factory=list)


DestinationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class ReceivedResults(Strict):
    """What a destination receives (DIMSE or DICOMweb alike)."""

    receives_results: bool = True
    # How the SEGs it receives hold their segments (what its viewers decode): FRACTIONAL (default, drawn
    # right by OHIF, 3D Slicer and Orthanc's viewers), LABELMAP (Label Map Segmentation SOP class, for
    # receivers that support it) or BINARY (1 bit; web viewers mis-draw odd-sized frames).
    seg_encoding: SegEncoding = SegEncoding.FRACTIONAL


class Destination(ReceivedResults):
    """A DIMSE destination: results sent by C-STORE."""

    protocol: Literal["dimse"] = "dimse"
    name: DestinationName
    ae_title: AeTitle
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TlsClientSettings | None = None  # None: plain DICOM


class DispatchSettings(Strict):
    max_attempts: int = Field(6, ge=1)
    backoff_initial_s: float = Field(30.0, ge=0)
    backoff_max_s: float = Field(3600.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)


class QueryRetrieveSettings(Strict):
    """A PACS asked for missing baselines (C-FIND at study level, then C-MOVE to this node)."""

    protocol: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(30.0, gt=0)
    tls: TlsClientSettings | None = None  # None: plain DICOM


class SecretSource(Strict):
    """Where a secret is read, at each use (so that a rotated token is picked up): a file (its content, stripped of
    surrounding white space) or an environment variable. The secret itself is never in the config, nor logged."""

    file: Path | None = None
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of file or env")
        return self


class HttpAuthSettings(Strict):
    """HTTP authentication of this node at a DICOMweb service: a bearer token (OAuth access token, API key), or
    HTTP Basic (username and password)."""

    bearer_token: SecretSource | None = None
    username: str | None = None
    password: SecretSource | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> HttpAuthSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if (self.bearer_token is None) == (self.username is None):
            raise ValueError("give either bearer_token or username and password")
        return self


class HttpTlsSettings(Strict):
    """TLS when this node connects to a DICOMweb service over https."""

    # CA certificates (PEM bundle) the service's certificate must chain to; None: the system's trust store.
    ca_certificates: Path | None = None
    # This node's client certificate and key, for services that require one.
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _key_with_certificate(self) -> HttpTlsSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


def is_loopback(host: str) -> bool:
    """`host` (a name or an address, IPv6 with or without brackets) names this machine's loopback interface."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DicomWebService(Strict):
    """A DICOMweb service this node connects to: its base URL (the one `/studies` is appended to), how this node
    authenticates and the TLS it checks."""

    # e.g. https://pacs.example.org/dicom-web (Orthanc), .../dcm4chee-arc/aets/DCM4CHEE/rs (dcm4chee),
    # https://healthcare.googleapis.com/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb (Google),
    # https://WORKSPACE-SERVICE.dicom.azurehealthcareapis.com/v2 (Azure).
    url: str
    auth: HttpAuthSettings | None = None
    tls: HttpTlsSettings | None = None
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _service_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials do not belong in the URL: use auth (read from a file or variable)")
        if parts.query or parts.fragment:
            raise ValueError("the base URL takes no query or fragment")
        try:
            parts.port  # noqa: B018 - raises on an invalid port
        except ValueError as error:
            raise ValueError(str(error)) from None
        return value.rstrip("/")

    @model_validator(mode="after")
    def _no_credentials_in_clear(self) -> DicomWebService:
        parts = urlsplit(self.url)
        if self.auth is not None and parts.scheme != "https" and not is_loopback(parts.hostname or ""):
            raise ValueError("auth over plain http would send the credentials in clear: use an https:// URL")
        if self.tls is not None and parts.scheme != "https":
            raise ValueError("tls is set but the URL is not https://")
        return self


class DicomWebDestination(DicomWebService, ReceivedResults):
    """A DICOMweb destination: results sent by STOW-RS (POST {url}/studies)."""

    protocol: Literal["dicomweb"]
    name: DestinationName


class DicomWebQueryRetrieveSettings(DicomWebService):
    """A DICOMweb service asked for missing baselines: QIDO-RS (studies of the patient in the window), then WADO-RS
    of the chosen study into this node's store, checked as a C-STORE would be."""

    protocol: Literal["dicomweb"]
    # Named in pairing reasons, the audit trail and as the calling AE title of the instances it provides.
    name: AeTitle = "DICOMWEB"


def _protocol(value: Any) -> str:
    """The discriminator of destinations and query/retrieve peers: `protocol`, DIMSE when absent."""
    if isinstance(value, dict):
        return str(value.get("protocol", "dimse"))
    return str(getattr(value, "protocol", "dimse"))


AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_protocol),
]
AnyQueryRetrieve = Annotated[
    Annotated[QueryRetrieveSettings, Tag("dimse")] | Annotated[DicomWebQueryRetrieveSettings, Tag("dicomweb")],
    Discriminator(_protocol),
]
