"""The DICOMweb client against real servers: results sent by STOW-RS to Orthanc's DICOMweb plugin and to this
node's own STOW-RS endpoint (over TLS, with a token), dead letters as for C-STORE, and a baseline found by QIDO-RS
and retrieved by WADO-RS from Orthanc into the store, checked as a C-STORE would be."""

from __future__ import annotations

import hashlib
import logging
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node import dicomweb
from dicom_node.errors import RetrieveError
from dicom_node.ingest import parse_received
from dicom_node.settings import DicomWebQueryRetrieveSettings, HttpsServerSettings
from immunode.flow import dispatch_due
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import AuditKind, AuditOutcome, AuditRecord, Delivery, DeliveryState, Instance, utcnow
from storage.store import InstanceStore
from tests.certificates import make_certificates
from tests.dicom_node.test_dispatch import _job, _output
from tests.dicom_node.test_stow_server import TOKEN, Endpoint
from tests.synthetic import write_study
from tests.synthetic_ct import BASELINE_LESIONS, write_ct_study


def _deliveries(database: Database) -> list[Delivery]:
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)).all())


def _audits(database: Database) -> list[AuditRecord]:
    with database.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all())


def test_results_reach_orthanc_by_stow_rs(tmp_path: Path, make_settings, orthanc_dicomweb) -> None:
    settings = make_settings(
        destinations=[{"name": "orthanc-web", "protocol": "dicomweb", "url": orthanc_dicomweb.dicomweb_url}]
    )
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    study = write_study(tmp_path / "src", with_ct=False, shape_zyx=(3, 8, 8), lesions=())
    job = _job(database, study.study_uid, "P1")
    for path in study.pet_files:
        _output(database, layout, job, path, "orthanc-web")
    trail = AuditTrail(database, layout.spool)
    sent = dispatch_due(settings, database, layout, trail=trail)
    assert sent == 3
    assert [d.state for d in _deliveries(database)] == [DeliveryState.SENT] * 3
    (series,) = orthanc_dicomweb.series_of_study(study.study_uid)  # checked through Orthanc's REST API
    assert len(orthanc_dicomweb.instances_of_series(series["SeriesInstanceUID"])) == 3
    (audit,) = _audits(database)
    assert (audit.kind, audit.outcome, audit.instances) == (AuditKind.SEND, AuditOutcome.COMPLETED, 3)
    assert audit.called_ae_title == "orthanc-web" and audit.peer_port == orthanc_dicomweb.http_port
    assert "STOW-RS HTTP 200" in audit.detail
    database.dispose()


def test_a_202_with_a_failed_instance_is_not_its_delivery(
    tmp_path: Path, make_settings, database_url: str, caplog
) -> None:
    """A real STOW-RS peer (this node's own endpoint, HTTPS with the hospital CA, a bearer token read from a file)
    stores one result and refuses the other: only the stored one counts as delivered."""
    caplog.set_level(logging.DEBUG)
    certificates = make_certificates(tmp_path / "certs")
    tls = HttpsServerSettings(certificate=certificates.server.certificate, private_key=certificates.server.key)
    peer = Endpoint(tmp_path / "peer", f"sqlite:///{tmp_path / 'peer.sqlite3'}", tls=tls)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    settings = make_settings(
        database_url,
        destinations=[
            {
                "name": "cloud",
                "protocol": "dicomweb",
                "url": f"https://localhost:{peer.port}",
                "auth": {"bearer_token": {"file": str(token)}},
                "tls": {"ca_certificates": str(certificates.ca)},
            }
        ],
        dispatch={"max_attempts": 3, "backoff_initial_s": 0, "backoff_max_s": 0, "timeout_s": 10},
    )
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    one = write_study(tmp_path / "one", with_ct=False, shape_zyx=(2, 8, 8), lesions=())
    other = write_study(tmp_path / "other", with_ct=False, shape_zyx=(2, 8, 8), lesions=())
    # The peer already holds study `one` under another patient: it refuses more of it (identity conflict).
    conflicting = pydicom.dcmread(one.pet_files[0])
    conflicting.PatientID = "SOMEONE-ELSE"
    conflicting.SOPInstanceUID = conflicting.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    conflicting.save_as(tmp_path / "conflicting.dcm")
    data = (tmp_path / "conflicting.dcm").read_bytes()
    peer.store.store(parse_received(data), data, "EARLIER")
    _output(database, layout, _job(database, one.study_uid, "P1"), one.pet_files[1], "cloud")
    _output(database, layout, _job(database, other.study_uid, "P2"), other.pet_files[0], "cloud")
    try:
        trail = AuditTrail(database, layout.spool)
        assert dispatch_due(settings, database, layout, trail=trail) == 1
        refused, delivered = _deliveries(database)
        assert delivered.state is DeliveryState.SENT
        assert refused.state is DeliveryState.PENDING and refused.attempts == 1
        assert "STOW-RS failure reason 0xC100" in refused.last_error and "HTTP 202" in refused.last_error
        (audit,) = _audits(database)
        assert audit.outcome is AuditOutcome.PARTIAL and audit.instances == 1 and audit.tls
        assert audit.study_uids == [other.study_uid]
        assert set(peer.instances()) >= {str(pydicom.dcmread(other.pet_files[0]).SOPInstanceUID)}
        assert {i.calling_ae_title for i in peer.instances().values()} == {"EARLIER", "GATEWAY"}
        # The same semantics as C-STORE: retried, then a dead letter.
        for step in (1, 2):
            dispatch_due(settings, database, layout, utcnow() + timedelta(seconds=step), trail)
        assert _deliveries(database)[0].state is DeliveryState.DEAD
        # The token is sent, never logged nor recorded.
        assert TOKEN not in caplog.text
        assert all(TOKEN not in a.detail for a in _audits(database))
    finally:
        peer.close()
        database.dispose()


def test_missing_secret_or_unreachable_service_fails_the_attempt(
    tmp_path: Path, make_settings, monkeypatch
) -> None:
    monkeypatch.delenv("IMMUNODE_TEST_TOKEN", raising=False)
    settings = make_settings(
        destinations=[
            {"name": "down", "protocol": "dicomweb", "url": "http://127.0.0.1:9/dicom-web"},
            {
                "name": "no-token",
                "protocol": "dicomweb",
                "url": "http://127.0.0.1:9/dicom-web",
                "auth": {"bearer_token": {"env": "IMMUNODE_TEST_TOKEN"}},
            },
        ],
        dispatch={"max_attempts": 1, "backoff_initial_s": 0, "backoff_max_s": 0, "timeout_s": 5},
    )
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    study = write_study(tmp_path / "src", with_ct=False, shape_zyx=(2, 8, 8), lesions=())
    job = _job(database, study.study_uid, "P1")
    _output(database, layout, job, study.pet_files[0], "down")
    _output(database, layout, job, study.pet_files[1], "no-token")
    assert dispatch_due(settings, database, layout) == 0
    down, no_token = _deliveries(database)
    assert down.state is DeliveryState.DEAD and "cannot connect" in down.last_error
    assert no_token.state is DeliveryState.DEAD
    assert "credentials unavailable: environment variable IMMUNODE_TEST_TOKEN is not set" in no_token.last_error
    database.dispose()


def test_baseline_found_by_qido_and_retrieved_by_wado(tmp_path: Path, orthanc_dicomweb, database_url: str) -> None:
    baseline = write_ct_study(tmp_path / "t0", BASELINE_LESIONS[:1], "20260105")
    files = list(baseline.ct_files) + [baseline.rtstruct]
    orthanc_dicomweb.upload(files)
    peer = DicomWebQueryRetrieveSettings(protocol="dicomweb", url=orthanc_dicomweb.dicomweb_url, name="ORTHANC-WEB")
    database = Database(database_url)
    layout = FileLayout(tmp_path / "store")
    store = InstanceStore(database, layout)
    audits: list = []
    header = pydicom.dcmread(baseline.ct_files[0], stop_before_pixels=True)
    found = dicomweb.find_studies(
        peer, "IMMUNODE", str(header.PatientID), "", date(2026, 1, 1), date(2026, 1, 31), audits.append
    )
    (facts,) = found
    assert facts.study_instance_uid == baseline.study_uid and facts.study_date == date(2026, 1, 5)
    assert "CT" in facts.modalities and facts.issuer_of_patient_id == str(header.get("IssuerOfPatientID", ""))
    assert dicomweb.find_studies(peer, "IMMUNODE", str(header.PatientID), "", date(2025, 1, 1), date(2025, 2, 1)) == []
    arrived: list[str] = []
    summary = dicomweb.retrieve_study(
        peer, "IMMUNODE", baseline.study_uid, store, 1 << 29, audits.append, arrived.append
    )
    assert summary == f"WADO-RS: {len(files)} stored, 0 refused" and arrived == [baseline.study_uid]
    with database.session() as session:
        stored = {i.sop_instance_uid: i for i in session.scalars(select(Instance)).all()}
    for path in files:  # the instances as Orthanc holds them, byte for byte, filed under the peer's name
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert stored[uid].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert stored[uid].calling_ae_title == "ORTHANC-WEB"
    assert not list(layout.receiving.iterdir())
    assert [(a.kind, a.outcome) for a in audits] == [
        (AuditKind.QUERY, AuditOutcome.COMPLETED),
        (AuditKind.RETRIEVE, AuditOutcome.COMPLETED),
    ]
    with pytest.raises(RetrieveError, match="HTTP 404"):
        dicomweb.retrieve_study(peer, "IMMUNODE", "1.2.3.4.5", store, 1 << 29, audits.append)
    assert audits[-1].outcome is AuditOutcome.FAILED
    database.dispose()
