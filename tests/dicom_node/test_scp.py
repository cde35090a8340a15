"""The storage SCP against real peers: dcmtk echoscu/storescu as the scanner, and raw pynetdicom for
payloads no well-behaved sender produces (bytes that are not DICOM)."""

from __future__ import annotations

import shutil
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy import func, select

from dicom_node import status
from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import AuditOutcome, AuditRecord, Event, Instance, Series
from storage.store import InstanceStore
from tests.conftest import require_tool, storescu, wait_until
from tests.synthetic import write_study
from tests.synthetic_dicom import write_rt_plan_and_dose


@pytest.fixture
def node(tmp_path: Path, make_settings):
    settings = make_settings()
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    store = InstanceStore(database, layout)
    scp = StorageSCP(settings.node, settings.peers, store, AuditTrail(database, layout.spool))
    port, _ = scp.start()
    yield scp, port, database
    scp.stop()
    database.dispose()


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"), shape_zyx=(8, 32, 32), lesions=())


def _instance_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count(Instance.id)))


def _audit(database: Database, **match) -> AuditRecord | None:
    with database.session() as session:
        records = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
    found = [r for r in records if all(getattr(r, k) == v for k, v in match.items())]
    return found[-1] if found else None


def _events(database: Database) -> list[str]:
    with database.session() as session:
        return [e.message for e in session.scalars(select(Event)).all()]


def test_echo_from_allowed_peer(node) -> None:
    _, port, _ = node
    completed = subprocess.run(
        [require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "IMMUNODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr


def test_store_pet_and_ct(node, small_study) -> None:
    _, port, database = node
    files = list(small_study.pet_files) + list(small_study.ct_files)
    completed = storescu(port, files)
    assert completed.returncode == 0, completed.stderr
    assert _instance_count(database) == len(files)
    with database.session() as session:
        modalities = sorted(session.scalars(select(Series.modality)).all())
    assert modalities == ["CT", "PT"]


def test_unknown_calling_ae_is_rejected_at_association(node, small_study) -> None:
    _, port, database = node
    completed = storescu(port, [small_study.pet_files[0]], calling="INTRUDER")
    assert completed.returncode != 0
    assert "Rejected" in completed.stderr or "rejected" in completed.stderr.lower()
    assert _instance_count(database) == 0
    record = wait_until(lambda: _audit(database, calling_ae_title="INTRUDER"), 10)
    assert record.outcome is AuditOutcome.REJECTED and "calling AE title not recognised" in record.detail
    assert record.peer_host == "127.0.0.1" and record.called_ae_title == "IMMUNODE"


def test_a_class_left_out_by_the_config_gets_no_presentation_context(
    make_settings, tmp_path: Path, small_study
) -> None:
    settings = make_settings(
        node={"storage_sop_classes": ["PositronEmissionTomographyImageStorage", "1.2.840.10008.5.1.4.1.1.2"]}
    )
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start()
    try:
        ds = pydicom.dcmread(small_study.ct_files[0])
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        path = tmp_path / "mr.dcm"
        ds.save_as(path)
        completed = storescu(port, [path])
        assert "presentation context" in (completed.stdout + completed.stderr).lower()
        assert _instance_count(database) == 0
        assert storescu(port, [small_study.ct_files[0]]).returncode == 0
    finally:
        scp.stop()
        database.dispose()


def test_a_whole_study_folder_with_rt_plan_and_rt_dose_is_stored(node, tmp_path: Path, small_study) -> None:
    """A PACS forwards whole studies: storescu scanning the study's folder must not halt at a class no
    pipeline uses (an RT Plan and a multi-frame RT Dose here, beside the PET/CT)."""
    _, port, database = node
    folder = tmp_path / "study"
    shutil.copytree(small_study.pet_files[0].parent, folder / "PT")
    shutil.copytree(small_study.ct_files[0].parent, folder / "CT")
    write_rt_plan_and_dose(folder / "RT", pydicom.dcmread(small_study.ct_files[0]))
    completed = storescu(port, [folder], extra=["--scan-directories", "--recurse"])
    assert completed.returncode == 0, completed.stderr
    expected = len(list(folder.rglob("*.dcm")))
    assert _instance_count(database) == expected
    with database.session() as session:
        assert {"RTPLAN", "RTDOSE", "PT", "CT"} <= set(session.scalars(select(Series.modality)).all())


@pytest.mark.parametrize("hostile_uid", ["../../x", "1." + "2" * 70], ids=["path-traversal", "over-64-chars"])
def test_hostile_sop_instance_uid_is_refused_and_nothing_is_lost(
    node, tmp_path: Path, small_study, hostile_uid
) -> None:
    _, port, database = node
    assert storescu(port, [small_study.pet_files[0]]).returncode == 0
    ds = pydicom.dcmread(small_study.pet_files[1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = hostile_uid
    path = tmp_path / "hostile.dcm"
    ds.save_as(path)
    completed = storescu(port, [path], extra=["-v"])
    output = completed.stdout + completed.stderr
    assert "DataSetDoesNotMatchSOPClass" in output, output
    assert _instance_count(database) == 1  # the earlier instance is still there
    stored = list((Path(database.url.split("///")[1]).parent / "objects").rglob("*.dcm"))
    assert len(stored) == 1
    kept, original = pydicom.dcmread(stored[0]), pydicom.dcmread(small_study.pet_files[0])
    assert kept.SOPInstanceUID == original.SOPInstanceUID and kept.PixelData == original.PixelData
    assert not (tmp_path.parent / "x").exists()
    with database.session() as session:
        refusal = session.scalar(select(Event).where(Event.message.contains("not a valid UID")))
    assert refusal.study_instance_uid == small_study.study_uid  # in the study's record


def test_deflated_transfer_syntax_is_accepted(node, small_study) -> None:
    _, port, database = node
    completed = storescu(port, [small_study.pet_files[0]], extra=["--propose-deflated"])
    assert completed.returncode == 0, completed.stderr
    with database.session() as session:
        assert session.scalar(select(Instance.transfer_syntax_uid)) == "1.2.840.10008.1.2.1.99"


def _raw_store(port: int, sop_class: str, sop_instance: str, payload: bytes) -> int:
    """Send a C-STORE whose data set is arbitrary bytes, as a broken sender would (pynetdicom's public
    send_c_store refuses to, so the DIMSE message is built by hand)."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(sop_class, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMMUNODE")
    assert assoc.is_established
    # Pause the requestor's reactor as send_c_store does, so that it does not consume the response.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_instance
        request.Priority = 2
        request.DataSet = BytesIO(payload)
        assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
        _, response = assoc.dimse.get_msg(block=True)
        return int(response.Status)
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()


def test_bytes_that_are_not_dicom_get_cannot_decode(node, tmp_path: Path, small_study) -> None:
    _, port, database = node
    assert storescu(port, [small_study.pet_files[0]]).returncode == 0
    code = _raw_store(port, "1.2.840.10008.5.1.4.1.1.128", "1.2.3.4", b"this is not a DICOM data set at all" * 10)
    assert code == status.CANNOT_DECODE
    assert _instance_count(database) == 1


def test_truncated_instance_is_refused(node, tmp_path: Path, small_study) -> None:
    _, port, database = node
    ds = pydicom.dcmread(small_study.pet_files[2])
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    truncated = buffer.getvalue()[:-500]
    code = _raw_store(port, ds.SOPClassUID, ds.SOPInstanceUID, truncated)
    assert code in (status.CANNOT_DECODE, status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert _instance_count(database) == 0
    assert not any(Path(database.url.split("///")[1]).parent.joinpath("incoming").iterdir())


def test_truncated_file_is_refused_by_storescu_without_harm(node, tmp_path: Path, small_study) -> None:
    _, port, database = node
    data = small_study.pet_files[3].read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    completed = storescu(port, [path])
    assert completed.returncode != 0 or "A900" in completed.stderr or "C210" in completed.stderr.upper()
    assert _instance_count(database) == 0


def test_a_conflicting_instance_gets_a_failure_status_and_status_shows_it(
    node, tmp_path: Path, small_study, make_settings, capsys
) -> None:
    import yaml

    from immunode.cli import main as cli_main

    _, port, database = node
    assert storescu(port, list(small_study.pet_files[:2])).returncode == 0
    stray = pydicom.dcmread(small_study.pet_files[2])
    stray.PatientID = "../../../../etc/passwd"
    path = tmp_path / "stray.dcm"
    stray.save_as(path)
    completed = storescu(port, [path], extra=["-v"])
    assert "Error: CannotUnderstand" in completed.stdout + completed.stderr  # 0xC100, a failure status
    assert _instance_count(database) == 2
    config = tmp_path / "config.yaml"
    settings = make_settings(storage={"root": str(Path(database.url.split("///")[1]).parent), "min_free_mb": 0})
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    assert cli_main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "Identity conflicts" in out and "1 in all" in out
    assert stray.SOPInstanceUID in out and "'../../../../etc/passwd'" in out
