"""The benchmark scripts run end to end (at CI size; docs/performance.md's figures come from the full runs). They
print figures; nothing here asserts a time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_benchmark_script_runs_small() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| immunode (fsync + index) |" in completed.stdout
    assert "| study complete -> SR accepted |" in completed.stdout
    assert "| last instance -> SR accepted by the PACS, quiet time excluded |" in completed.stdout
    assert "| idle `immunode serve` process, PSS |" in completed.stdout


def _run_small(script: str, *arguments: str) -> str:
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
def test_ingest_benchmark_runs_small() -> None:
    """dcmtk storescp, bare pynetdicom and immunode each receive the real PET/CT over 1 and 4 associations."""
    out = _run_small("ingest.py")
    for receiver in ("dcmtk storescp", "bare pynetdicom", "immunode"):
        for associations in (1, 4):
            assert f"| {receiver} | {associations} |" in out


@pytest.mark.slow
def test_accelerator_benchmark_runs_small() -> None:
    out = _run_small("accelerator.py", "--seconds", "0.2")
    for network in ("histology encoder", "CytAct 3D CNN", "expression transformer"):
        assert f"| {network}" in out


@pytest.mark.slow
def test_memory_benchmark_runs_small() -> None:
    out = _run_small("memory.py")
    assert "| idle node, no worker process (workers start with the first job) |" in out
    assert "| after the job, workers returned (idle_release_s) |" in out
