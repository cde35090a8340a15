"""The STOW-RS endpoint against real clients: dicomweb-client (the library hospitals' tools use) and raw HTTP for
bodies no well-behaved client sends. What it acknowledges is stored durably and indexed, byte for byte; each part
has its own status; every request is authenticated and audited."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import fromstring

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.web import _load_xml_dataset
from sqlalchemy import select

from common.passwords import hash_password
from dicom_node import status
from dicom_node.settings import DicomWebServerSettings, HttpsServerSettings
from dicom_node.stow_server import DicomWebServer
from dicom_node.tls import server_context
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import AuditKind, AuditOutcome, AuditRecord, Event, Instance
from storage.store import InstanceStore
from tests.certificates import make_certificates
from tests.synthetic import write_study

PASSWORD = "correct horse battery staple"
TOKEN = "tok-3f1b2c9d8e7a6b5c4d3e2f1a0b9c8d7e"
CLIENTS = [
    {"name": "ORTHANC", "username": "orthanc", "password_hash": hash_password(PASSWORD, 1000)},
    {"name": "GATEWAY", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()},
    {"name": "FAR-AWAY", "username": "far", "password_hash": hash_password(PASSWORD, 1000), "host": "10.9.9.0/24"},
]


class Endpoint:
    """A STOW-RS endpoint on a free port over a store on a temporary root."""

    def __init__(self, root: Path, database_url: str, tls=None, **settings) -> None:
        self.settings = DicomWebServerSettings(host="127.0.0.1", port=0, clients=CLIENTS, **settings)
        self.database = Database(database_url)
        self.layout = FileLayout(root)
        self.store = InstanceStore(self.database, self.layout)
        self.stored_studies: list[str] = []
        self.server = DicomWebServer(
            self.settings,
            "IMMUNODE",
            self.store,
            AuditTrail(self.database, self.layout.spool),
            server_context(tls) if tls is not None else None,
            self.stored_studies.append,
        )
        self.port = self.server.start()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def instances(self) -> dict[str, Instance]:
        with self.database.session() as session:
            return {i.sop_instance_uid: i for i in session.scalars(select(Instance)).all()}

    def audits(self) -> list[AuditRecord]:
        with self.database.session() as session:
            return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all())

    def events(self) -> list[str]:
        with self.database.session() as session:
            return [e.message for e in session.scalars(select(Event)).all()]

    def close(self) -> None:
        self.server.stop()
        self.database.dispose()


@pytest.fixture
def endpoint(tmp_path: Path, database_url: str) -> Iterator[Endpoint]:
    node = Endpoint(tmp_path / "store", database_url)
    yield node
    node.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"), shape_zyx=(4, 16, 16), lesions=(), with_ct=False)


def _basic(user: str = "orthanc", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = 'multipart/related; type="application/dicom"; boundary=b0undary'


def _truncated_pixels(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-64]
    out = path.parent / "truncated.dcm"
    ds.save_as(out)
    return out.read_bytes()


def test_parts_are_stored_byte_for_byte_and_each_has_its_status(endpoint: Endpoint, study, tmp_path: Path) -> None:
    good = [p.read_bytes() for p in study.pet_files[:3]]
    bad = _truncated_pixels(study.pet_files[3])
    response = requests.post(
        f"{endpoint.url}/studies",
        data=_body([*good, bad, b"not DICOM at all"]),
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json", **_basic()},
        timeout=30,
    )
    assert response.status_code == 202  # some stored, some failed
    report = pydicom.Dataset.from_json(response.json())
    stored = {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence}
    failures = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in report.FailedSOPSequence}
    good_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in study.pet_files[:3]}
    bad_uid = str(pydicom.dcmread(study.pet_files[3]).SOPInstanceUID)
    assert stored == good_uids
    assert failures == {bad_uid: status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "": status.CANNOT_DECODE}
    # Acknowledged means indexed, and the stored file is exactly what was sent.
    instances = endpoint.instances()
    assert set(instances) == good_uids
    for data in good:
        uid = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).SOPInstanceUID)
        row = instances[uid]
        assert row.sha256 == hashlib.sha256(data).hexdigest() == hashlib.sha256(
            endpoint.layout.absolute(row.path).read_bytes()
        ).hexdigest()
        assert row.calling_ae_title == "ORTHANC"
    assert not list(endpoint.layout.receiving.iterdir())  # nothing left behind
    (audit,) = endpoint.audits()
    assert (audit.kind, audit.outcome, audit.instances) == (AuditKind.STOW, AuditOutcome.PARTIAL, 3)
    assert audit.calling_ae_title == "ORTHANC" and audit.study_uids == [study.study_uid]
    assert "HTTP 202" in audit.detail and "0xA900" in audit.detail
    refusals = [e for e in endpoint.events() if e.startswith("STOW-RS of")]
    assert len(refusals) == 2 and any(bad_uid in e and "0xA900" in e for e in refusals)
    assert endpoint.stored_studies == [study.study_uid] * 3


def test_dicomweb_client_stores_with_a_token_chunked_and_reads_xml(endpoint: Endpoint, study) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    client = DICOMwebClient(endpoint.url, session=session, chunk_size=4096)  # bodies beyond 4 kB go chunked
    client.set_http_retry_params(retry=False)
    datasets = [pydicom.dcmread(p) for p in study.pet_files]
    report = client.store_instances(datasets, study_instance_uid=study.study_uid)
    assert {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence} == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    assert "FailedSOPSequence" not in report
    assert {i.calling_ae_title for i in endpoint.instances().values()} == {"GATEWAY"}
    # Again, asking for XML: duplicates are acknowledged (stored once), the report is PS3.19 XML.
    response = session.post(
        f"{endpoint.url}/studies/{study.study_uid}",
        data=_body([study.pet_files[0].read_bytes()]),
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+xml"},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/dicom+xml"
    xml = _load_xml_dataset(fromstring(response.content))
    assert str(xml.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == str(datasets[0].SOPInstanceUID)
    assert len(endpoint.instances()) == len(datasets)


def test_a_study_other_than_the_path_names_is_refused(endpoint: Endpoint, study) -> None:
    response = requests.post(
        f"{endpoint.url}/studies/1.2.3.4",
        data=_body([study.pet_files[0].read_bytes()]),
        headers={"Content-Type": MULTIPART, **_basic()},
        timeout=30,
    )
    assert response.status_code == 409
    (failed,) = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert not endpoint.instances()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 401),
        (_basic(password="wrong"), 401),
        (_basic(user="far"), 401),  # right password, but only from 10.9.9.0/24
        ({"Authorization": "Bearer not-the-token"}, 401),
    ],
)
def test_no_valid_credentials_no_store(endpoint: Endpoint, study, headers: dict, expected: int) -> None:
    response = requests.post(
        f"{endpoint.url}/studies",
        data=_body([study.pet_files[0].read_bytes()]),
        headers={"Content-Type": MULTIPART, **headers},
        timeout=30,
    )
    assert response.status_code == expected and "Basic" in response.headers["WWW-Authenticate"]
    assert not endpoint.instances()
    (audit,) = endpoint.audits()
    assert audit.outcome is AuditOutcome.REJECTED and audit.peer_host == "127.0.0.1"
    assert PASSWORD not in audit.detail and "not-the-token" not in audit.detail


def test_malformed_requests_store_nothing(endpoint: Endpoint, study) -> None:
    data = study.pet_files[0].read_bytes()
    post = lambda body, content_type, path="/studies": requests.post(  # noqa: E731
        f"{endpoint.url}{path}", data=body, headers={"Content-Type": content_type, **_basic()}, timeout=30
    )
    assert post(data, "application/dicom").status_code == 415
    assert post(_body([data]), 'multipart/related; type="application/dicom+json"; boundary=b0undary').status_code == 415
    assert post(_body([data]), 'multipart/related; type="application/dicom"').status_code == 400  # no boundary
    assert post(_body([data])[:-40], MULTIPART).status_code == 400  # cut before the closing boundary
    assert post(b"--b0undary--\r\n", MULTIPART).status_code == 400  # no instance
    assert post(_body([data]), MULTIPART, "/studies/not-a-uid").status_code == 404
    assert requests.get(f"{endpoint.url}/studies", timeout=30).status_code == 405

    def cut() -> Iterator[bytes]:  # chunked, the connection's body ends mid-part
        yield _body([data])[: len(data) // 2]

    assert post(cut(), MULTIPART).status_code == 400
    assert not endpoint.instances()
    assert not list(endpoint.layout.receiving.iterdir())
    assert all(a.outcome is AuditOutcome.FAILED and a.instances == 0 for a in endpoint.audits())


def test_out_of_space_is_a_transient_refusal(tmp_path: Path, database_url: str, study) -> None:
    node = Endpoint(tmp_path / "store", database_url)
    node.layout.min_free_bytes = 1 << 60  # the disk is "full"
    try:
        response = requests.post(
            f"{node.url}/studies",
            data=_body([study.pet_files[0].read_bytes()]),
            headers={"Content-Type": MULTIPART, **_basic()},
            timeout=30,
        )
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert not node.instances()
    finally:
        node.close()


def test_https_with_the_hospital_ca(tmp_path: Path, database_url: str, study) -> None:
    certificates = make_certificates(tmp_path / "certs")
    tls = HttpsServerSettings(certificate=certificates.server.certificate, private_key=certificates.server.key)
    node = Endpoint(tmp_path / "store", database_url, tls=tls)
    try:
        url = f"https://localhost:{node.port}/studies"
        body, headers = _body([study.pet_files[0].read_bytes()]), {"Content-Type": MULTIPART, **_basic()}
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(url, data=body, headers=headers, timeout=30)  # not the system's trust
        response = requests.post(url, data=body, headers=headers, timeout=30, verify=str(certificates.ca))
        assert response.status_code == 200
        assert node.audits()[-1].tls
    finally:
        node.close()


def test_a_file_meta_that_names_another_instance_is_refused(endpoint: Endpoint, study, tmp_path: Path) -> None:
    """The file meta stands in for the C-STORE request: its SOP Instance UID must be the data set's."""
    ds = pydicom.dcmread(study.pet_files[0])
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "mismatch.dcm")  # the file meta written as it is
    response = requests.post(
        f"{endpoint.url}/studies",
        data=_body([(tmp_path / "mismatch.dcm").read_bytes()]),
        headers={"Content-Type": MULTIPART, **_basic()},
        timeout=30,
    )
    assert response.status_code == 409
    (failed,) = pydicom.Dataset.from_json(response.json()).FailedSOPSequence
    assert failed.FailureReason == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "file meta" in endpoint.events()[-1]
