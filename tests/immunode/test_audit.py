"""The audit trail: every association and refusal recorded, spooled while the index is unavailable and
written when it is back; `immunode audit` lists the records; the log has one line each. Files the node
creates are readable by the service user only."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from immunode.cli import main as cli_main
from storage.errors import IndexUnavailable
from storage.schema import AuditKind, AuditOutcome, AuditRecord, Event
from tests.conftest import REPO, free_port, serve, storescu, wait_until
from tests.synthetic import write_study


class _Down:
    """The index as seen while its database is unreachable."""

    def session(self):
        raise IndexUnavailable("index transaction failed: OperationalError: connection refused (injected)")

    transaction = session


def test_refusals_are_spooled_while_the_index_is_down_and_written_after(
    tmp_path: Path, make_settings, start_node, database_url: str
) -> None:
    node = start_node(make_settings(database_url))
    pet = write_study(tmp_path / "s", with_ct=False, shape_zyx=(2, 16, 16), lesions=()).pet_files
    database = node.database
    node.trail.database = _Down()
    node.store.database = _Down()
    try:
        intruder = storescu(node.port, [pet[0]], calling="INTRUDER")
        assert intruder.returncode != 0
        storescu(node.port, [pet[0]])  # the index cannot commit: 0xA700, and the refusal is spooled
        wait_until(lambda: node.trail.spooled() >= 3, 10)  # two audit records and one refusal event
    finally:
        node.trail.database = database
        node.store.database = database
    assert node.trail.flush_spool() >= 3
    assert node.trail.spooled() == 0
    with database.session() as session:
        audits = session.scalars(select(AuditRecord)).all()
        events = [e.message for e in session.scalars(select(Event)).all()]
    assert any(a.calling_ae_title == "INTRUDER" and a.outcome is AuditOutcome.REJECTED for a in audits)
    assert any(a.calling_ae_title == "STORESCU" and "1 instance(s) refused" in a.detail for a in audits)
    assert any("refused with 0xA700" in m for m in events)


def test_audit_command_and_log_lines(tmp_path: Path, make_settings, start_node, capsys, caplog) -> None:
    caplog.set_level("INFO", logger="storage.audit")
    settings = make_settings()
    node = start_node(settings)
    pet = write_study(tmp_path / "s", with_ct=False, shape_zyx=(2, 16, 16), lesions=()).pet_files
    assert storescu(node.port, list(pet)).returncode == 0
    assert storescu(node.port, [pet[0]], calling="INTRUDER").returncode != 0
    wait_until(lambda: len([r for r in caplog.records if r.getMessage().startswith("audit ")]) >= 2, 10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit ")]
    assert any("'STORESCU' -> 'IMMUNODE' 127.0.0.1" in line and "COMPLETED, 2 instance(s)" in line for line in lines)
    assert any("'INTRUDER'" in line and "REJECTED" in line for line in lines)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    capsys.readouterr()
    assert cli_main(["--config", str(config), "audit", "--since", "1h"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "COMPLETED, 2 instance(s)" in out[0] and "REJECTED" in out[1]
    assert cli_main(["--config", str(config), "audit", "--since", "2999-01-01"]) == 0
    assert "no audit records" in capsys.readouterr().out
    with node.database.session() as session:
        kinds = {r.kind for r in session.scalars(select(AuditRecord)).all()}
    assert kinds == {AuditKind.ASSOCIATION}


def test_storage_root_index_and_log_are_private(tmp_path: Path, make_settings) -> None:
    """`immunode serve` as a service runs it: files and folders it creates are for the service user only."""
    port = free_port()
    settings = make_settings(node={"port": port}, logging={"level": "INFO", "file": str(tmp_path / "log" / "node.log")})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    errors = tmp_path / "serve.err"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "immunode.cli", "--config", str(config), "serve"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        pet = write_study(tmp_path / "s", with_ct=False, shape_zyx=(1, 16, 16), lesions=()).pet_files
        wait_until(lambda: storescu(port, [pet[0]]).returncode == 0, 60, 0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:  # where it hangs: every thread's stack (faulthandler on SIGUSR1)
            process.send_signal(signal.SIGUSR1)
            time.sleep(1)
            process.kill()
            log = (tmp_path / "log" / "node.log").read_text()[-4000:]
            pytest.fail(f"serve did not stop within 30 s of SIGTERM\n{log}\n{errors.read_text()[-12000:]}")
    root = settings.storage.root

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(root) == 0o700
    assert mode(root / "index.sqlite3") == 0o600
    assert mode(tmp_path / "log" / "node.log") == 0o600
    (stored,) = list((root / "objects").rglob("*.dcm"))
    assert mode(stored) == 0o600 and mode(stored.parent) == 0o700


def test_serve_stops_on_a_sigterm_delivered_to_any_of_its_threads(tmp_path: Path, make_settings) -> None:
    """The kernel may deliver a process-directed SIGTERM (systemd's, docker's) to any thread; CPython then only
    sets a flag for the main thread. `serve` must stop whichever thread took it (it once kept serving, its main
    thread asleep in an untimed wait). The signal is sent here to a thread other than the main one (tgkill)."""
    import ctypes
    import os

    port = free_port()
    process = serve(tmp_path, "node", make_settings(node={"port": port}))
    try:
        echo = ["echoscu", "-aet", "ECHOSCU", "-aec", "IMMUNODE", "127.0.0.1", str(port)]
        wait_until(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 60, 0.5)
        threads = [int(tid) for tid in os.listdir(f"/proc/{process.pid}/task") if int(tid) != process.pid]
        assert threads, "serve runs its stages and SCP in threads"
        sys_tgkill = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)  # tgkill(tgid, tid, sig)
        if sys_tgkill is None:
            pytest.skip(f"tgkill's system call number on {os.uname().machine} is not listed here")
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(sys_tgkill, process.pid, threads[0], signal.SIGTERM) == 0
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
