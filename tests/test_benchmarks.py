"""The benchmark script runs end to end (at CI size; docs/benchmarks.md's figures come from the full run)."""

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
    assert "| idle `immunode serve` process, resident |" in completed.stdout
