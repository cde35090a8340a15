"""Test certificates made on the fly (no key material is committed): a CA, server and client certificates
signed by it, and a second, untrusted CA with its own client certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: Pair  # CN=immunode, SAN localhost and 127.0.0.1, signed by ca
    client: Pair  # CN=scanner-1, O=Test Hospital, signed by ca
    pacs: Pair  # CN=pacs, SAN localhost and 127.0.0.1, signed by ca (a TLS destination)
    rogue_ca: Path
    rogue_client: Pair  # signed by rogue_ca: not trusted by the node


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
        ]
    )


def _write(folder: Path, stem: str, certificate: x509.Certificate, key) -> Pair:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return Pair(cert_path, key_path)


def _issue(common_name: str, issuer_name: x509.Name, issuer_key, server: bool, is_ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name if issuer_name is not None else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    signer = issuer_key if issuer_key is not None else key
    return builder.sign(signer, hashes.SHA256()), key


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _issue("Test Hospital CA", None, None, server=False, is_ca=True)
    ca = _write(folder, "ca", ca_cert, ca_key)
    server = _write(folder, "server", *_issue("immunode", ca_cert.subject, ca_key, server=True))
    client = _write(folder, "client", *_issue("scanner-1", ca_cert.subject, ca_key, server=False))
    pacs = _write(folder, "pacs", *_issue("pacs", ca_cert.subject, ca_key, server=True))
    rogue_cert, rogue_key = _issue("Rogue CA", None, None, server=False, is_ca=True)
    rogue_ca = _write(folder, "rogue-ca", rogue_cert, rogue_key)
    rogue_client = _write(folder, "rogue-client", *_issue("intruder", rogue_cert.subject, rogue_key, server=False))
    return Certificates(ca.certificate, server, client, pacs, rogue_ca.certificate, rogue_client)
