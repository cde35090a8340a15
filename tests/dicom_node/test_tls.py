"""DICOM over TLS against dcmtk peers: echoscu/storescu +tls to the node, the result sender to storescp +tls,
the query/retrieve SCU to a TLS C-FIND peer; plaintext and untrusted clients refused; every connection
audited with the peer's certificate subject. Certificates are made by the test (tests/certificates.py)."""

from __future__ import annotations

import ssl
import subprocess
import time
from datetime import date
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import func, select

from dicom_node import qr
from dicom_node.scu import send_batch
from dicom_node.settings import Destination, QueryRetrieveSettings, TlsClientSettings
from immunode.config import ConfigError
from immunode.service import Node
from storage.schema import AuditDirection, AuditKind, AuditOutcome, AuditRecord, Instance
from tests.certificates import Certificates, make_certificates
from tests.conftest import free_port, require_tool, wait_until
from tests.synthetic import write_study


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def pet_files(tmp_path_factory) -> list[Path]:
    return list(write_study(tmp_path_factory.mktemp("s"), with_ct=False, shape_zyx=(2, 16, 16), lesions=()).pet_files)


@pytest.fixture
def tls_node(make_settings, start_node, certs: Certificates):
    settings = make_settings(
        node={
            "tls": {
                "port": free_port(),
                "certificate": str(certs.server.certificate),
                "private_key": str(certs.server.key),
                "ca_certificates": str(certs.ca),
                "client_certificates": "required",
            }
        }
    )
    return start_node(settings)


def _dcmtk(tool: str, port: int, *args: str, tls: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [require_tool(tool), *(tls or []), "-aet", "STORESCU", "-aec", "IMMUNODE", "127.0.0.1", str(port), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _client_tls(certs: Certificates, pair=None) -> list[str]:
    pair = pair or certs.client
    return ["+tls", str(pair.key), str(pair.certificate), "+cf", str(certs.ca)]


def _audits(node: Node) -> list[AuditRecord]:
    with node.database.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all())


def test_echo_and_store_over_tls_with_a_client_certificate(tls_node: Node, certs: Certificates, pet_files) -> None:
    echo = _dcmtk("echoscu", tls_node.tls_port, tls=_client_tls(certs))
    assert echo.returncode == 0, echo.stderr
    store = _dcmtk("storescu", tls_node.tls_port, *map(str, pet_files), tls=_client_tls(certs))
    assert store.returncode == 0, store.stderr
    with tls_node.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(pet_files)
    records = wait_until(lambda: [a for a in _audits(tls_node) if a.instances == len(pet_files)], 10)
    assert records[0].tls and "CN=scanner-1" in records[0].tls_peer_subject
    assert records[0].outcome is AuditOutcome.COMPLETED and records[0].calling_ae_title == "STORESCU"
    # Plain DICOM is still on beside TLS.
    assert _dcmtk("echoscu", tls_node.port).returncode == 0


def test_plaintext_and_untrusted_clients_are_refused(tls_node: Node, certs: Certificates) -> None:
    plain = _dcmtk("echoscu", tls_node.tls_port)
    assert plain.returncode != 0
    rogue = _dcmtk("echoscu", tls_node.tls_port, tls=_client_tls(certs, certs.rogue_client))
    assert rogue.returncode != 0
    anonymous = _dcmtk("echoscu", tls_node.tls_port, tls=["+tla", "+cf", str(certs.ca)])
    assert anonymous.returncode != 0  # no client certificate, but one is required
    refused = wait_until(
        lambda: (r := [a for a in _audits(tls_node) if a.kind is AuditKind.CONNECTION]) and len(r) >= 3 and r, 15
    )
    assert all(a.tls and "TLS handshake failed" in a.detail for a in refused)
    with tls_node.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0


def test_results_are_sent_over_tls_to_a_dcmtk_pacs(tmp_path: Path, certs: Certificates, pet_files) -> None:
    port = free_port()
    folder = tmp_path / "pacs"
    folder.mkdir()
    pacs = subprocess.Popen(
        [
            require_tool("storescp"),
            "+tls",
            str(certs.pacs.key),
            str(certs.pacs.certificate),
            "+cf",
            str(certs.ca),
            "--aetitle",
            "PACS",
            "--output-directory",
            str(folder),
            str(port),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        destination = Destination(
            name="pacs",
            ae_title="PACS",
            host="127.0.0.1",
            port=port,
            tls=TlsClientSettings(
                ca_certificates=certs.ca, certificate=certs.client.certificate, private_key=certs.client.key
            ),
        )
        sent = send_batch(destination, "IMMUNODE", pet_files, timeout_s=15)
        assert all(r.ok for r in sent.results), [r.detail for r in sent.results]
        assert sent.audit.tls and "CN=pacs" in sent.audit.tls_peer_subject
        assert (sent.audit.direction, sent.audit.outcome) == (AuditDirection.OUTBOUND, AuditOutcome.COMPLETED)
        wait_until(lambda: len(list(folder.iterdir())) == len(pet_files), 10)
        # The PACS's certificate must chain to the configured CA: with the rogue CA nothing is sent.
        distrust = destination.model_copy(
            update={"tls": destination.tls.model_copy(update={"ca_certificates": certs.rogue_ca})}
        )
        refused = send_batch(distrust, "IMMUNODE", pet_files, timeout_s=15)
        assert not any(r.ok for r in refused.results)
    finally:
        pacs.terminate()
        pacs.wait(10)


def test_query_retrieve_scu_speaks_tls(certs: Certificates) -> None:
    """A TLS C-FIND peer (pynetdicom's SCP with a server certificate requiring client certificates)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.pacs.certificate, certs.pacs.key)
    context.verify_mode = ssl.CERT_REQUIRED

    def on_find(event):
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3.4"
        match.PatientID = event.identifier.PatientID
        match.StudyDate = "20260105"
        match.ModalitiesInStudy = "CT"
        yield 0xFF00, match

    ae = AE(ae_title="PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, ssl_context=context, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    records = []
    try:
        peer = QueryRetrieveSettings(
            ae_title="PACS",
            host="127.0.0.1",
            port=port,
            tls=TlsClientSettings(
                ca_certificates=certs.ca, certificate=certs.client.certificate, private_key=certs.client.key
            ),
        )
        found = qr.find_studies(peer, "IMMUNODE", "P1", "", date(2026, 1, 1), date(2026, 2, 1), records.append)
    finally:
        server.shutdown()
    assert [f.study_instance_uid for f in found] == ["1.2.3.4"]
    assert records[-1].kind is AuditKind.QUERY and records[-1].tls and records[-1].outcome is AuditOutcome.COMPLETED


def test_unusable_tls_files_stop_start_up_naming_the_key(make_settings, tmp_path: Path, certs: Certificates) -> None:
    settings = make_settings(
        node={
            "tls": {
                "certificate": str(tmp_path / "absent.crt"),
                "private_key": str(certs.server.key),
                "client_certificates": "none",
            }
        }
    )
    with pytest.raises(ConfigError, match="node.tls"):
        Node(settings)


def test_a_client_that_never_starts_its_handshake_blocks_no_one(tls_node: Node, certs: Certificates) -> None:
    """pynetdicom's own server runs the handshake in its accepting thread: one silent client would keep
    every other out. Here each handshake runs in its connection's thread."""
    import socket

    silent = [socket.create_connection(("127.0.0.1", tls_node.tls_port)) for _ in range(3)]
    try:
        started = time.monotonic()
        assert _dcmtk("echoscu", tls_node.tls_port, tls=_client_tls(certs)).returncode == 0
        assert time.monotonic() - started < 5
    finally:
        for sock in silent:
            sock.close()
