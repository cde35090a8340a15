"""Sending results: only a success (or warning) status is a delivery; everything else is a failure."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage

from dicom_node.scu import send_batch
from dicom_node.settings import Destination
from tests.conftest import StoreSCP, free_port, require_tool, wait_until
from tests.synthetic import write_study


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    study = write_study(tmp_path_factory.mktemp("send"), with_ct=False, shape_zyx=(3, 16, 16), lesions=())
    return list(study.pet_files)


def _destination(port: int) -> Destination:
    return Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)


def test_batch_to_a_working_pacs_is_one_association(tmp_path: Path, files) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    pacs.start()
    try:
        results = send_batch(_destination(pacs.port), "IMMUNODE", files, timeout_s=10).results
    finally:
        pacs.stop()
    assert [r.ok for r in results] == [True] * len(files)
    assert len(pacs.received()) == len(files)


def test_destination_down_is_not_a_success(files) -> None:
    results = send_batch(_destination(free_port()), "IMMUNODE", files, timeout_s=5).results
    assert not any(r.ok for r in results) and all(r.detail for r in results)


def test_refused_association_is_not_a_success(tmp_path: Path, files) -> None:
    port = free_port()
    refusing = subprocess.Popen(
        [require_tool("storescp"), "--refuse", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(
            lambda: (
                subprocess.run(["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0
            ),
            10,
        )
        results = send_batch(_destination(port), "IMMUNODE", files, timeout_s=5).results
    finally:
        refusing.terminate()
        refusing.wait(10)
    assert not any(r.ok for r in results)


def _pynetdicom_peer(handler) -> tuple[object, int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    port = free_port()
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]), port


def test_failure_status_is_not_a_success(files) -> None:
    server, port = _pynetdicom_peer(lambda event: 0xA700)
    try:
        results = send_batch(_destination(port), "IMMUNODE", files, timeout_s=5).results
    finally:
        server.shutdown()
    assert not any(r.ok for r in results)
    assert all("0xA700" in r.detail for r in results)


def test_no_response_within_the_timeout_is_not_a_success(files) -> None:
    def slow(event):
        time.sleep(4)
        return 0x0000

    server, port = _pynetdicom_peer(slow)
    try:
        results = send_batch(_destination(port), "IMMUNODE", files[:1], timeout_s=1).results
    finally:
        server.shutdown()
    assert results[0].ok is False

