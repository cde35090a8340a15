"""The benchmark scripts run end to end (at CI size; docs/benchmarks.md's and docs/performance.md's figures come
from the full runs). They print figures; nothing here asserts a time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run_small(script: str, *arguments: str) -> str:
    """A benchmark script at CI size; its standard output (the figures)."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--small", *arguments],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
def test_benchmark_script_runs_small() -> None:
    output = _run_small("run.py")
    assert "| immunode (fsync + index) |" in output
    assert "| study complete -> SR accepted |" in output
    assert "| last instance -> SR accepted by the PACS, quiet time excluded |" in output
    assert "| idle `immunode serve` process, PSS |" in output


@pytest.mark.slow
def test_faults_benchmark_runs_small() -> None:
    """kill -9 mid-transfer and a disk filling up, at CI size (the PostgreSQL outage has its own test:
    tests/immunode/test_index_outage.py)."""
    output = _run_small("faults.py", "--only", "kill,disk")
    assert "| acknowledged but missing | 0 |" in output
    assert "| files in flight left after restart | 0 |" in output
    assert "| associations aborted; storescu exit codes | 0; [0] |" in output or "not root" in output


@pytest.mark.slow
def test_ingest_benchmark_runs_small() -> None:
    """dcmtk storescp, bare pynetdicom and immunode each receive the real PET/CT over 1 and 4 associations."""
    output = _run_small("ingest.py")
    for receiver in ("dcmtk storescp", "bare pynetdicom", "immunode"):
        for associations in (1, 4):
            assert f"| {receiver} | {associations} |" in output


@pytest.mark.slow
def test_accelerator_benchmark_runs_small() -> None:
    output = _run_small("accelerator.py", "--seconds", "0.2")
    for network in ("histology encoder", "CytAct 3D CNN", "expression transformer"):
        assert f"| {network}" in output


@pytest.mark.slow
def test_memory_benchmark_runs_small() -> None:
    output = _run_small("memory.py")
    assert "| idle node, no worker process (workers start with the first job) |" in output
    assert "| after the job, workers returned (idle_release_s) |" in output
