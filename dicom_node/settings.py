"""Configuration blocks of the networking layer: the node's listener and TLS, the peers allowed to store, the
destinations results go to, dispatch retries and the query/retrieve peer. Composed into `immunode.config.Settings`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from common.settings import Strict
from common.states import SegEncoding

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # DICOM AE VR: 16 chars, no backslash or control chars


AeTitle = Annotated[str, Field(pattern=AE_TITLE_PATTERN)]


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
    # How the SEGs it receives hold their segments (what its viewers decode): FRACTIONAL (default, drawn
    # right by OHIF, 3D Slicer and Orthanc's viewers), LABELMAP (Label Map Segmentation SOP class, for
    # receivers that support it) or BINARY (1 bit; web viewers mis-draw odd-sized frames).
    seg_encoding: SegEncoding = SegEncoding.FRACTIONAL
    tls: TlsClientSettings | None = None  # None: plain DICOM


class DispatchSettings(Strict):
    max_attempts: int = Field(6, ge=1)
    backoff_initial_s: float = Field(30.0, ge=0)
    backoff_max_s: float = Field(3600.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)


class QueryRetrieveSettings(Strict):
    """A PACS asked for missing baselines (C-FIND at study level, then C-MOVE to this node)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(30.0, gt=0)
    tls: TlsClientSettings | None = None  # None: plain DICOM
