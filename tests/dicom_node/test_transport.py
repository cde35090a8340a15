"""No peer can lock the node out: partial PDUs, slow drips, huge declared lengths and bare connections against
a running SCP, with dcmtk storescu as the scanner that must still get through."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage, Verification
from sqlalchemy import select

from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.schema import AuditKind, AuditOutcome, AuditRecord
from storage.store import InstanceStore
from tests.conftest import storescu, wait_until
from tests.synthetic import write_study


@pytest.fixture(scope="module")
def pet_file(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("t"), with_ct=False, shape_zyx=(2, 16, 16), lesions=()).pet_files[0]


@pytest.fixture
def scp(make_settings):
    started = []

    def start(**node):
        settings = make_settings(node=node)
        database = Database(settings.database_url)
        layout = FileLayout(settings.storage.root)
        node_scp = StorageSCP(
            settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool)
        )
        port, _ = node_scp.start(port=0)
        started.append((node_scp, database))
        start.guard = node_scp.guard  # the latest SCP's transport guard
        return port, database

    yield start
    for node_scp, database in started:
        node_scp.stop()
        database.dispose()


def _connect(port: int, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    return sock


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def _audits(database: Database) -> list[AuditRecord]:
    with database.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all())


def test_partial_pdu_headers_do_not_keep_a_scanner_out(scp, pet_file: Path) -> None:
    """Ten connections each sending a PDU header that announces a body never sent, and ten sending half a
    header, held every slot for over 130 s before; a storescu must get through within seconds."""
    port, database = scp(max_associations=10, max_pending_connections=10)
    hostile = [_connect(port, struct.pack(">BBL", 0x01, 0, 1000)) for _ in range(10)]
    hostile += [_connect(port, b"\x01\x00\x00") for _ in range(10)]
    time.sleep(0.5)
    started = time.monotonic()
    completed = storescu(port, [pet_file])
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr
    assert elapsed < 5.0, f"storescu took {elapsed:.1f} s"
    for sock in hostile:
        sock.close()
    record = wait_until(lambda: [a for a in _audits(database) if a.kind is AuditKind.CONNECTION], 10)[0]
    assert record.outcome is AuditOutcome.CLOSED and "evicted" in record.detail


def test_a_pdu_that_trickles_in_times_out_like_an_idle_one(scp) -> None:
    port, database = scp(network_timeout_s=1.5)
    sock = _connect(port, struct.pack(">BBL", 0x01, 0, 200))
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 6:
        try:
            sock.sendall(b"\x00")  # one byte every 0.2 s: each recv succeeds, the PDU never completes
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    closed = closed or _closed_by_peer(sock, 1)
    assert closed and time.monotonic() - started < 5
    record = wait_until(lambda: [a for a in _audits(database) if a.kind is AuditKind.CONNECTION], 10)[0]
    assert "did not arrive whole" in record.detail


@pytest.mark.parametrize("pdu_type", [0x01, 0x04], ids=["associate-rq", "p-data"])
def test_a_declared_length_beyond_the_limit_ends_the_connection_at_once(scp, pdu_type: int) -> None:
    port, database = scp()
    sock = _connect(port, struct.pack(">BBL", pdu_type, 0, 0xFFFFFFFF) + b"\x00" * 64)
    assert _closed_by_peer(sock, 2)
    record = wait_until(lambda: [a for a in _audits(database) if a.kind is AuditKind.CONNECTION], 10)[0]
    assert "4294967295" in record.detail


def test_an_oversized_p_data_pdu_inside_an_association_ends_it(scp) -> None:
    port, database = scp(max_pdu_bytes=65536)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMMUNODE")
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 65536 * 4))
    wait_until(lambda: not assoc.is_established, 5)
    record = wait_until(lambda: [a for a in _audits(database) if a.kind is AuditKind.ASSOCIATION], 10)[0]
    assert record.outcome is AuditOutcome.ABORTED and "declares" in record.detail


def test_bare_connections_hold_no_slot_and_leave_no_audit_record(scp, pet_file: Path) -> None:
    port, database = scp(max_associations=2, max_pending_connections=2)
    for _ in range(30):
        _connect(port).close()
    # Each connection registers in its own thread, so a late-registering bare connection could still displace
    # a newer one as "oldest pending": the promise is that closed connections are released, so wait for that.
    wait_until(lambda: len(scp.guard.pending) == 0, 10)
    started = time.monotonic()
    assert storescu(port, [pet_file]).returncode == 0
    assert time.monotonic() - started < 5
    records = wait_until(lambda: _audits(database), 10)
    assert [r.kind for r in records] == [AuditKind.ASSOCIATION]


def test_the_association_limit_counts_negotiated_associations(scp, pet_file: Path) -> None:
    port, database = scp(max_associations=1)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(PositronEmissionTomographyImageStorage)
    held = ae.associate("127.0.0.1", port, ae_title="IMMUNODE")
    assert held.is_established
    try:
        completed = storescu(port, [pet_file])
        assert completed.returncode != 0
        record = wait_until(lambda: [a for a in _audits(database) if a.outcome is AuditOutcome.REJECTED], 10)[0]
        assert "local limit exceeded" in record.detail and record.calling_ae_title == "STORESCU"
    finally:
        held.release()
    assert storescu(port, [pet_file]).returncode == 0


def test_a_wrong_called_ae_title_is_rejected_unless_configured(scp, pet_file: Path) -> None:
    port, database = scp()
    completed = storescu(port, [pet_file], called="SOMEONE-ELSE")
    assert completed.returncode != 0
    record = wait_until(lambda: [a for a in _audits(database) if a.outcome is AuditOutcome.REJECTED], 10)[0]
    assert record.called_ae_title == "SOMEONE-ELSE" and "called AE title not recognised" in record.detail
    lenient, _ = scp(accept_any_called_ae=True)
    assert storescu(lenient, [pet_file], called="SOMEONE-ELSE").returncode == 0
