"""Memory benchmark: what `immunode serve` holds idle, at its peak while it receives and analyses a large PET/CT,
and once its worker processes are returned.

Memory is the proportional set size (PSS, /proc/PID/smaps_rollup) summed over the node's process tree: shared
pages (Python, NumPy, PyTorch libraries mapped by the node and its workers) count once in all, not once per
process as resident sizes would. Sampled every 50 ms while the study is received and analysed.

The node runs with its defaults for the workers (started by the first routed job, returned after
`workers.idle_release_s`, here 10 s, 1 s with --small); the study is a synthetic whole-body PET/CT (tests.synthetic) of
`--slices` PET and as many CT slices (default 1,000 + 1,000 = 2,000 instances, 192 x 192, 2 mm slices) with
24 lesions, sent by dcmtk storescu and analysed by the PET pipeline (which reads the CT for lesion locations); the
SR goes to a dcmtk storescp playing the PACS.

Usage: python benchmarks/memory.py [--slices N] [--small]   (--small: the CI-sized run)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.processes import descendants  # noqa: E402


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    return [pid, *descendants(pid)]


def worker_processes(pid: int) -> list[int]:
    """The node's analysis worker processes (spawned pool processes, not multiprocessing's resource tracker)."""
    found = []
    for member in process_tree(pid)[1:]:
        try:
            if b"spawn_main" in Path(f"/proc/{member}/cmdline").read_bytes():
                found.append(member)
        except OSError:
            continue
    return found


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kb(pid: int, children: bool = True) -> int:
    """PSS of a process, with all its descendants unless `children` is false."""
    return sum(pss_kb(member) for member in (process_tree(pid) if children else [pid]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=1000, help="PET slices (and as many CT slices)")
    parser.add_argument("--small", action="store_true", help="CI-sized: 40 + 40 slices of 64 x 64, shorter waits")
    args = parser.parse_args()
    from benchmarks.run import end_to_end, whole_body_lesions
    from tests.synthetic import write_study

    shape = (40, 64, 64) if args.small else (args.slices, 192, 192)
    spacing = (4.0, 4.0, 2.0)
    count = 3 if args.small else 24
    lesions = whole_body_lesions(shape[0] * spacing[2], count)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(root / "study", shape_zyx=shape, spacing_xyz=spacing, lesions=lesions)
        result = end_to_end(
            root / "study",
            root / "run",
            workers={"idle_release_s": 1.0 if args.small else 10.0},
            warm_wait_s=2.0 if args.small else 5.0,
            rules=[{"name": "pet", "pipeline": "pet_quant", "series": {"modality": "PT"}}],  # the PET/CT analysis
        )
    print(
        f"Memory (PSS of the node's process tree), whole-body PET/CT of {2 * shape[0]} instances "
        f"({shape[0]} PET + {shape[0]} CT slices, {shape[1]} x {shape[2]}), {count} lesions:"
    )
    print("| state | MB |")
    print("|---|---:|")
    print(f"| idle node, no worker process (workers start with the first job) | {result.idle_tree_mb:.0f} |")
    print(f"| peak while receiving and analysing | {result.peak_tree_mb:.0f} |")
    print(f"| after the job, workers returned (idle_release_s) | {result.after_tree_mb:.0f} |")
    print(f"| study complete -> SR accepted (the job starts the worker) | {result.complete_to_sr_s:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
