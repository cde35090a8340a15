"""TLS contexts for DICOM over TLS (PS3.15 B.1, BCP 195): TLS 1.2 or newer, certificates verified."""

from __future__ import annotations

import ssl
from pathlib import Path

from dicom_node.errors import TlsSetupError
from dicom_node.settings import TlsClientSettings, TlsServerFiles

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(settings: TlsServerFiles) -> ssl.SSLContext:
    """A listener's context (the SCP's, the DICOMweb endpoint's): its certificate and key; client certificates
    verified against the CA as configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.minimum_version]
    _load_chain(context, settings.certificate, settings.private_key)
    if settings.ca_certificates is not None:
        _load_ca(context, settings.ca_certificates)
    context.verify_mode = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }[settings.client_certificates]
    return context


def client_context(settings: TlsClientSettings) -> ssl.SSLContext:
    """The context for connecting to a peer: its certificate verified (and its name, unless switched off)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[settings.minimum_version]
    if settings.ca_certificates is not None:
        _load_ca(context, settings.ca_certificates)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.certificate is not None and settings.private_key is not None:
        _load_chain(context, settings.certificate, settings.private_key)
    context.check_hostname = settings.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _readable(key: str, path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise TlsSetupError(f"{key}: cannot read {path}: {error.strerror}") from None


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    """The certificate (chain) and its key; errors name the setting and the file (the key is the file named)."""
    _readable("certificate", certificate)
    _readable("private_key", private_key)
    try:
        context.load_cert_chain(certificate, private_key)
    except ssl.SSLError as error:
        raise TlsSetupError(
            f"certificate, private_key: {certificate} with {private_key}: not a PEM certificate and its matching "
            f"key ({error.reason or error})"
        ) from None


def _load_ca(context: ssl.SSLContext, ca_certificates: Path) -> None:
    _readable("ca_certificates", ca_certificates)
    try:
        context.load_verify_locations(cafile=ca_certificates)
    except ssl.SSLError as error:
        raise TlsSetupError(
            f"ca_certificates: {ca_certificates}: no PEM CA certificate ({error.reason or error})"
        ) from None


def tls_arguments(settings: TlsClientSettings | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for `AE.associate`, or None for plain DICOM."""
    if settings is None:
        return None
    return client_context(settings), settings.server_hostname or host
