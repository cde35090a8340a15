"""Benchmarks, measured side by side in one run on the same study and machine, dcmtk storescu as sender.

1. Ingest of a synthetic PET/CT (default 400 instances): immunode (fsync + index) vs a bare pynetdicom
   storage SCP writing received bytes to disk vs dcmtk storescp.
2. End to end on a whole-body PET/CT with 10 lesions: study complete -> SR accepted by the destination,
   with the peak memory of the node and of its worker process.

Usage: python benchmarks/run.py [--small] [--repeats N]   (--small: the CI-sized run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, PositronEmissionTomographyImageStorage
from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.memory import tree_pss_kb, worker_processes  # noqa: E402
from common.states import OutputKind  # noqa: E402
from dicom_node.scp import StorageSCP  # noqa: E402
from immunode.config import parse_settings  # noqa: E402
from storage.audit import AuditTrail  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.files import FileLayout  # noqa: E402
from storage.schema import Delivery, DeliveryState, Job, Output, Study  # noqa: E402
from storage.store import InstanceStore  # noqa: E402
from tests.conftest import StoreSCP, free_port, wait_until  # noqa: E402
from tests.synthetic import SyntheticLesion, write_study  # noqa: E402


def send(port: int, folder: Path, called: str) -> float:
    """dcmtk storescu with `TCP_NODELAY=1`, as benchmarks/ingest.py (without it each small instance waits for a
    40 ms delayed ACK on loopback)."""
    started = time.perf_counter()
    completed = subprocess.run(
        [
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            called,
            "--scan-directories",
            "--recurse",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr)
    return elapsed


def ingest_immunode(folder: Path, work: Path) -> float:
    settings = parse_settings(
        {"node": {"host": "127.0.0.1", "port": free_port()}, "storage": {"root": str(work), "min_free_mb": 0}}
    )
    database = Database(settings.database_url)
    layout = FileLayout(work)
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start()
    try:
        return send(port, folder, "IMMUNODE")
    finally:
        scp.stop()
        database.dispose()


def ingest_bare_pynetdicom(folder: Path, work: Path) -> float:
    work.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10**9))

    def handle_store(event):  # the pynetdicom documentation's fast-path examples
        target = work / f"{next(counter)}.dcm"
        if event.dataset_path:  # received to disk (the node's SCP turns this on for the process)
            shutil.move(event.dataset_path, target)
        else:
            with open(target, "wb") as handle:
                handle.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        return send(port, folder, "BARE")
    finally:
        server.shutdown()


def ingest_dcmtk(folder: Path, work: Path) -> float:
    scp = StoreSCP(work, free_port(), "DCMTK")
    scp.start()
    try:
        return send(scp.port, folder, "DCMTK")
    finally:
        scp.stop()


@dataclass(frozen=True)
class EndToEnd:
    last_instance_to_sr_s: float  # last instance stored -> SR accepted by the PACS, quiet time excluded
    complete_to_sr_s: float  # study complete (routed) -> SR accepted by the PACS
    idle_node_mb: float  # proportional set size (PSS) of the idle `immunode serve` process (before the study)
    idle_tree_mb: float  # ... with its worker process(es), if started (warm_at_start)
    peak_tree_mb: float  # peak PSS of the node with its workers while receiving and analysing
    after_tree_mb: float | None = None  # PSS of the node once its workers were returned (idle_release_s)


def end_to_end(
    study_folder: Path,
    work: Path,
    stable_s: float = 1.0,
    workers: dict | None = None,
    warm_wait_s: float = 15.0,
    rules: list[dict] | None = None,
) -> EndToEnd:
    """`immunode serve` as its own process (its workers warm at start unless `workers` says otherwise), a study sent
    by storescu, results to storescp; with `workers.idle_release_s`, the node's memory is measured again once
    its workers are returned."""
    workers = workers or {"warm_at_start": True}
    pacs = StoreSCP(work / "pacs", free_port())
    pacs.start()
    port = free_port()
    settings = parse_settings(
        {
            "node": {"host": "127.0.0.1", "port": port},
            "storage": {"root": str(work / "node"), "min_free_mb": 0},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
            # The default poll: hand-offs between stages are event-driven, the poll is only the safety net.
            "routing": {"study_stable_s": stable_s, **({"rules": rules} if rules is not None else {})},
            "workers": workers,
            "logging": {"level": "WARNING"},
        }
    )
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    # The working tree's code, as the tests use it (python -m from the repository root).
    server = subprocess.Popen([sys.executable, "-m", "immunode.cli", "--config", str(config), "serve"], cwd=REPO)
    peak_kb = 0
    try:
        wait_until(
            lambda: (
                subprocess.run(
                    ["echoscu", "-aec", "IMMUNODE", "-aet", "STORESCU", "127.0.0.1", str(port)], capture_output=True
                ).returncode
                == 0
            ),
            timeout_s=60,
        )
        time.sleep(warm_wait_s)  # warm workers import the analysis code; an on-demand node settles
        idle_node_kb, idle_tree_kb = tree_pss_kb(server.pid, children=False), tree_pss_kb(server.pid)
        sender = threading.Thread(target=send, args=(port, study_folder, "IMMUNODE"))
        sender.start()
        database = Database(settings.database_url, migrate=False)

        def sr_sent():
            nonlocal peak_kb
            peak_kb = max(peak_kb, tree_pss_kb(server.pid))
            with database.session() as session:
                return session.execute(
                    select(Study.completed_at, Delivery.sent_at, Study.last_received_at)
                    .join(Job, Job.study_fk == Study.id)
                    .join(Output, Output.job_fk == Job.id)
                    .join(Delivery, Delivery.output_fk == Output.id)
                    .where(Output.kind == OutputKind.SR, Delivery.state == DeliveryState.SENT)
                ).first()

        completed_at, sent_at, last_received = wait_until(sr_sent, timeout_s=3600, interval_s=0.05)
        sender.join()
        database.dispose()
        after_kb = None
        if workers.get("idle_release_s"):
            # The workers are returned idle_release_s after the job: measured once only the node is left.
            wait_until(lambda: not worker_processes(server.pid), timeout_s=workers["idle_release_s"] + 120)
            after_kb = tree_pss_kb(server.pid)
    finally:
        server.terminate()
        server.wait(60)
        pacs.stop()
    return EndToEnd(
        (sent_at - last_received).total_seconds() - stable_s,
        (sent_at - completed_at).total_seconds(),
        idle_node_kb / 1024,
        idle_tree_kb / 1024,
        peak_kb / 1024,
        after_kb / 1024 if after_kb is not None else None,
    )


def whole_body_lesions(length_mm: float, count: int) -> tuple[SyntheticLesion, ...]:
    """`count` lesions of 8-14 mm spread along a whole body of `length_mm`, of varied uptake."""
    return tuple(
        SyntheticLesion(
            ((-90 + 37 * i) % 160 - 80, (i % 3) * 30 - 30, -length_mm * 0.42 + i * length_mm * 0.84 / count),
            8.0 + (i % 4) * 2.0,
            4.0 + (i % 7) * 0.9,
        )
        for i in range(count)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI-sized inputs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    slices, matrix = (20, 64) if args.small else (200, 192)
    repeats = 1 if args.small else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(root / "ingest", shape_zyx=(slices, matrix, matrix), lesions=())
        instances = sum(1 for _ in (root / "ingest").rglob("*.dcm"))
        timings: dict[str, list[float]] = {
            "immunode (fsync + index)": [],
            "bare pynetdicom SCP": [],
            "dcmtk storescp": [],
        }
        for repeat in range(repeats):
            # Alternate the order so that no receiver always goes first on a cold cache.
            runs = [
                ("immunode (fsync + index)", ingest_immunode),
                ("bare pynetdicom SCP", ingest_bare_pynetdicom),
                ("dcmtk storescp", ingest_dcmtk),
            ]
            for name, function in runs if repeat % 2 == 0 else list(reversed(runs)):
                timings[name].append(function(root / "ingest", root / f"{name.split()[0]}-{repeat}"))
        medians = {name: statistics.median(values) for name, values in timings.items()}
        bare = medians["bare pynetdicom SCP"]
        print(f"Ingest of {instances} instances ({matrix}x{matrix}, PET + CT), median of {repeats} run(s):")
        print("| receiver | seconds | instances/s | vs bare pynetdicom |")
        print("|---|---|---|---|")
        for name, seconds in medians.items():
            print(f"| {name} | {seconds:.2f} | {instances / seconds:.0f} | {seconds / bare:.2f}x |")

        # A whole-body PET of 545 slices (the Siemens study's length), 3 mm slices, with its CT.
        wb_shape = (60, 64, 64) if args.small else (545, 128, 128)
        spacing = (4.0, 4.0, 3.0)
        count = 3 if args.small else 24
        lesions = whole_body_lesions(wb_shape[0] * spacing[2], count)
        write_study(root / "wb", shape_zyx=wb_shape, spacing_xyz=spacing, lesions=lesions)
        # Small: 5 s for the warm worker's imports before the idle figures (15 s in the full run).
        result = end_to_end(root / "wb", root / "e2e", warm_wait_s=5.0 if args.small else 15.0)
        print(
            f"\nEnd to end, whole-body PET/CT {wb_shape[0]} slices of {wb_shape[1]}x{wb_shape[2]} (PET + CT), "
            f"{len(lesions)} lesions:"
        )
        print(
            f"| last instance -> SR accepted by the PACS, quiet time excluded | {result.last_instance_to_sr_s:.1f} s |"
        )
        print(f"| study complete -> SR accepted | {result.complete_to_sr_s:.1f} s |")
        print(f"| idle `immunode serve` process, PSS | {result.idle_node_mb:.0f} MB |")
        print(f"| idle, with its warm worker process (workers.warm_at_start) | {result.idle_tree_mb:.0f} MB |")
        print(f"| peak, node with its worker processes, PSS | {result.peak_tree_mb:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
