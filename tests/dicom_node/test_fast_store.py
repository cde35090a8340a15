"""The C-STORE fast path (`dicom_node.fast_store`): what it writes and answers is what pynetdicom's path writes and
answers; what it does not take goes through pynetdicom unchanged.

Peers: dcmtk storescu (the scanner), pynetdicom as a requestor for what dcmtk does not send (C-ECHO and C-STORE
on one association, a tiny maximum PDU)."""

from __future__ import annotations

import hashlib
import struct
import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.sop_class import CTImageStorage, PositronEmissionTomographyImageStorage, Verification
from sqlalchemy import func, select

from dicom_node import fast_store, status
from dicom_node.fast_store import (
    Context,
    FastStoreSettings,
    ProtocolError,
    StoreReceiver,
    command_pdus,
    decode_command,
    encode_store_response,
    file_preamble_and_meta,
    store_command,
)
from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import Instance
from storage.store import InstanceStore
from tests.conftest import storescu
from tests.synthetic import write_study

CT, PET = str(CTImageStorage), str(PositronEmissionTomographyImageStorage)
UID_1, UID_2 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.22"


def _encoded_command(message) -> bytes:
    """The command set bytes pynetdicom sends for a message (its P-DATA fragments joined)."""
    data = b""
    for pdata in message.encode_msg(1, 0):
        for _, fragment in pdata.presentation_data_value_list:
            if fragment[0] & 1:
                data += fragment[1:]
    return data


@pytest.mark.parametrize("status_code", [0x0000, 0xA700, 0xC211, 0xB007])
@pytest.mark.parametrize("instance", [UID_1, UID_2])  # odd and even lengths (padding)
def test_the_response_is_the_command_set_pynetdicom_sends(status_code, instance) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status_code
    expected = _encoded_command_of(rsp, C_STORE_RSP)
    assert encode_store_response(store_command_for(7, CT, instance), status_code) == expected


def store_command_for(message_id: int, sop_class: str, instance: str):
    from dicom_node.fast_store import StoreCommand

    return StoreCommand(message_id, sop_class, instance)


def _encoded_command_of(primitive: C_STORE, message_class: type) -> bytes:
    message = message_class()
    message.primitive_to_message(primitive)
    return _encoded_command(message)


@pytest.mark.parametrize("instance", [UID_1, UID_2])
def test_a_request_pynetdicom_encodes_is_read_back(instance) -> None:
    req = C_STORE()
    req.MessageID = 513
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = instance
    req.Priority = 2
    req.MoveOriginatorApplicationEntityTitle = "MOVER"
    req.MoveOriginatorMessageID = 3
    req.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    command = store_command(decode_command(_encoded_command_of(req, C_STORE_RQ)))
    assert command == store_command_for(513, CT, instance)


def test_the_file_meta_is_the_one_pynetdicom_writes() -> None:
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    meta = create_file_meta(sop_class_uid=CT, sop_instance_uid=UID_2, transfer_syntax="1.2.840.10008.1.2.1")
    write_file_meta_info(buffer, meta)
    ours = file_preamble_and_meta(
        CT, UID_2, "1.2.840.10008.1.2.1", PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    )
    assert ours == buffer.getvalue()


def test_a_malformed_command_set_is_refused_by_the_decoder() -> None:
    with pytest.raises(ValueError):
        decode_command(struct.pack("<HHL", 0, 0x100, 50) + b"\x01\x00")  # declares more than there is
    with pytest.raises(ValueError):
        decode_command(struct.pack("<HHL", 8, 0x16, 2) + b"\x01\x00")  # not group 0000


def test_command_pdus_respect_the_peers_maximum() -> None:
    command = encode_store_response(store_command_for(1, CT, UID_1), 0)
    pdus = command_pdus(3, command, 40)
    assert len(pdus) > 1 and all(len(pdu) <= 40 + 6 for pdu in pdus)
    joined, controls = b"", []
    for pdu in pdus:
        length, context, control = struct.unpack(">LBB", pdu[6:12])
        assert context == 3 and len(pdu) == 6 + 4 + length
        joined += pdu[12:]
        controls.append(control)
    assert joined == command and controls == [0x01] * (len(pdus) - 1) + [0x03]


# --- the receiver, PDU by PDU ---------------------------------------------------------------------------


def _pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">LBB", len(data) + 2, context, control) + data for context, control, data in pdvs)
    return struct.pack(">BBL", 4, 0, len(body)) + body


def _request_command(message_id: int = 1, sop_class: str = CT, instance: str = UID_1) -> bytes:
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = instance
    req.Priority = 2
    req.DataSet = BytesIO(b"x")
    return _encoded_command_of(req, C_STORE_RQ)


def _echo_command() -> bytes:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    req = C_ECHO()
    req.MessageID = 9
    req.AffectedSOPClassUID = str(Verification)
    return _encoded_command_of(req, C_ECHO_RQ)


class _Peer:
    """What a receiver needs from its association, recorded."""

    def __init__(self, tmp_path: Path, handler=None) -> None:
        self.sent: list[bytes] = []
        self.requests = []
        self.handler = handler or self._store

    def _store(self, request) -> int:
        self.requests.append((request, request.dataset_path.read_bytes()))
        return status.SUCCESS

    def receiver(self, tmp_path: Path) -> StoreReceiver:
        contexts = {
            1: Context(CT, "1.2.840.10008.1.2.1"),
            3: Context(str(Verification), "1.2.840.10008.1.2"),
            5: Context(PET, "1.2.840.10008.1.2"),  # accepted, but not a class the fast path was given
        }
        return StoreReceiver(
            FastStoreSettings(lambda request: self.handler(request), tmp_path, "tmp", frozenset({CT})),
            contexts.get,
            lambda: "STORESCU",
            self.sent.append,
            lambda: 16384,
            ("1.2.3", "TEST"),
            object(),
        )


def test_a_store_in_fragments_is_written_whole_and_answered(tmp_path: Path) -> None:
    peer = _Peer(tmp_path)
    receiver = peer.receiver(tmp_path)
    command = _request_command()
    data = bytes(range(256)) * 40
    assert receiver.consume(_pdu((1, 0x01, command[:10]))) == []  # command in two fragments
    assert receiver.consume(_pdu((1, 0x03, command[10:]), (1, 0x00, data[:1000]))) == []
    assert receiver.consume(_pdu((1, 0x00, data[1000:5000]), (1, 0x00, data[5000:7000]))) == []
    assert receiver.consume(_pdu((1, 0x02, data[7000:]))) == []
    ((request, written),) = peer.requests
    assert written[request.dataset_offset :] == data
    assert request.sha256 == hashlib.sha256(written).hexdigest()
    assert request.size == len(written)
    assert request.dataset == data  # small: also kept in memory, checked from there
    assert (request.message_id, request.affected_sop_instance_uid, request.transfer_syntax) == (
        1, UID_1, "1.2.840.10008.1.2.1",
    )  # fmt: skip
    assert not request.dataset_path.exists()  # removed after the handler (the store moves it away)
    (response,) = peer.sent
    assert response[12:] == encode_store_response(store_command_for(1, CT, UID_1), 0)


def test_a_large_data_set_is_not_kept_in_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fast_store, "MAX_HELD_BYTES", 6000)
    peer = _Peer(tmp_path)
    receiver = peer.receiver(tmp_path)
    small, large = bytes(range(256)) * 20, bytes(range(256)) * 30
    for number, data in enumerate((large, small), start=1):
        receiver.consume(_pdu((1, 0x03, _request_command(number)), (1, 0x00, data[:4000])))
        receiver.consume(_pdu((1, 0x02, data[4000:])))
    (large_request, large_written), (small_request, small_written) = peer.requests
    assert large_request.dataset is None and large_written[large_request.dataset_offset :] == large
    assert small_request.dataset == small and small_written[small_request.dataset_offset :] == small


def test_other_messages_go_to_pynetdicom_unchanged_and_the_next_store_is_taken_again(tmp_path: Path) -> None:
    peer = _Peer(tmp_path)
    receiver = peer.receiver(tmp_path)
    echo = _echo_command()
    first, second = _pdu((3, 0x01, echo[:6])), _pdu((3, 0x03, echo[6:]))
    assert receiver.consume(first) == []  # held while the command set is incomplete
    assert receiver.consume(second) == [first, second]
    # a C-STORE on a context whose class the fast path does not serve: pynetdicom's, with its data set
    other = _request_command(sop_class=PET)
    command_pdu, data_pdu = _pdu((5, 0x03, other)), _pdu((5, 0x02, b"data"))
    assert receiver.consume(command_pdu) == [command_pdu]
    assert receiver.consume(data_pdu) == [data_pdu]
    # the message ended: the next C-STORE is the fast path's again
    assert receiver.consume(_pdu((1, 0x03, _request_command(2)), (1, 0x02, b"\x08\x00\x16\x00\x00\x00\x00\x00"))) == []
    assert [request.message_id for request, _ in peer.requests] == [2]


def test_a_handler_that_raises_answers_unable_to_process(tmp_path: Path) -> None:
    def broken(request):
        raise RuntimeError("bug")

    peer = _Peer(tmp_path, broken)
    receiver = peer.receiver(tmp_path)
    receiver.consume(_pdu((1, 0x03, _request_command()), (1, 0x02, b"abcd")))
    (response,) = peer.sent
    elements = decode_command(response[12:])
    assert struct.unpack("<H", elements[0x0900])[0] == 0xC211
    assert not list(tmp_path.glob("tmp*.dcm"))


def test_a_command_inside_a_data_set_aborts_and_leaves_nothing(tmp_path: Path) -> None:
    peer = _Peer(tmp_path)
    receiver = peer.receiver(tmp_path)
    receiver.consume(_pdu((1, 0x03, _request_command()), (1, 0x00, b"part")))
    assert len(list(tmp_path.glob("tmp*.dcm"))) == 1
    with pytest.raises(ProtocolError):
        receiver.consume(_pdu((1, 0x03, _request_command(2))))
    receiver.close()  # the association ends
    assert not list(tmp_path.glob("tmp*.dcm")) and not peer.requests


# --- through the SCP, against real peers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"), shape_zyx=(6, 48, 48), lesions=())


def _scp(make_settings, **node):
    settings = make_settings(node=node)
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start()
    return scp, port, database, layout


def _stored(database: Database, layout: FileLayout) -> dict[str, bytes]:
    with database.session() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.path)).all()
    return {uid: layout.absolute(path).read_bytes() for uid, path in rows}


def test_fast_and_pynetdicom_paths_store_the_same_bytes(make_settings, study) -> None:
    files = list(study.pet_files) + list(study.ct_files)
    results = {}
    for fast in (True, False):
        scp, port, database, layout = _scp(make_settings, fast_store=fast, max_pdu_bytes=4096)  # many PDUs each
        try:
            completed = storescu(port, files)
            assert completed.returncode == 0, completed.stderr
            results[fast] = _stored(database, layout)
        finally:
            scp.stop()
            database.dispose()
    assert len(results[True]) == len(files)
    assert results[True] == results[False]
    for path in files:  # and the data set is the one sent
        sent = pydicom.dcmread(path)
        kept = pydicom.dcmread(BytesIO(results[True][sent.SOPInstanceUID]))
        assert kept.PixelData == sent.PixelData


def test_echo_and_stores_share_an_association(make_settings, study) -> None:
    scp, port, database, layout = _scp(make_settings)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(PositronEmissionTomographyImageStorage)
        ae.maximum_pdu_size = 4096  # our responses in small PDUs too
        assoc = ae.associate("127.0.0.1", port, ae_title="IMMUNODE")
        assert assoc.is_established
        answers = [assoc.send_c_echo().Status]
        for path in study.pet_files[:3]:
            answers.append(assoc.send_c_store(pydicom.dcmread(path)).Status)
            answers.append(assoc.send_c_echo().Status)
        assoc.release()
        assert answers == [0x0000] * 7
        with database.session() as session:
            assert session.scalar(select(func.count(Instance.id))) == 3
    finally:
        scp.stop()
        database.dispose()


def test_concurrent_associations_are_all_stored(make_settings, study) -> None:
    scp, port, database, layout = _scp(make_settings)
    files = list(study.pet_files) + list(study.ct_files)
    try:
        outcomes = []

        def send(part):
            outcomes.append(storescu(port, part).returncode)

        threads = [threading.Thread(target=send, args=(files[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes == [0, 0, 0, 0]
        assert set(_stored(database, layout)) == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    finally:
        scp.stop()
        database.dispose()
