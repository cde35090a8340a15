"""TLS contexts for DICOM over TLS (PS3.15 B.1, BCP 195): TLS 1.2 or newer, certificates verified."""

from __future__ import annotations

import ssl

from dicom_node.errors import TlsSetupError
from dicom_node.settings import TlsClientSettings, TlsServerFiles

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(settings: TlsServerFiles) -> ssl.SSLContext:
    """A listener's context (the SCP's, the DICOMweb endpoint's): its certificate and key; client certificates
    verified against the CA as configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.minimum_version]
    try:
        context.load_cert_chain(settings.certificate, settings.private_key)
        if settings.ca_certificates is not None:
            context.load_verify_locations(cafile=settings.ca_certificates)
    except (OSError, ssl.SSLError) as error:
        raise TlsSetupError(f"cannot load the TLS certificate, key or CA certificates: {error}") from None
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
    try:
        if settings.ca_certificates is not None:
            context.load_verify_locations(cafile=settings.ca_certificates)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if settings.certificate is not None:
            context.load_cert_chain(settings.certificate, settings.private_key)
    except (OSError, ssl.SSLError) as error:
        raise TlsSetupError(f"cannot load the TLS certificate, key or CA certificates: {error}") from None
    context.check_hostname = settings.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_arguments(settings: TlsClientSettings | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for `AE.associate`, or None for plain DICOM."""
    if settings is None:
        return None
    return client_context(settings), settings.server_hostname or host
