"""Ingest benchmark: dcmtk storescp, a bare pynetdicom storage SCP and immunode receiving the same instances from
dcmtk storescu, interleaved in one run, over 1 and 4 associations; prints seconds and the ratios to dcmtk.

- Instances: the real PET/CT of ../shared/data (sts_002 and sts_003, CT and PET slices, ~30 KB each on average),
  repeated with new Study, Series, SOP Instance and Frame of Reference UIDs (and a new PatientID per copy) up to
  `--instances`; `--synthetic` uses a synthetic PET/CT of larger slices instead (tests.synthetic).
- Receivers, each in its own process, started fresh for each run and writing to a fresh folder under `--root`:
  dcmtk `storescp` (`--fork` for several associations; nothing is fsynced), pynetdicom's documented minimal C-STORE
  handler writing `event.encoded_dataset()` (pynetdicom's defaults; nothing fsynced) and `immunode serve`
  (every acknowledgement after the file's fsync and the index commit; no routing, so no analysis starts).
- Sender: dcmtk `storescu`, one process per association, the instances split evenly. `TCP_NODELAY=1` is set for
  dcmtk's tools (they honour it: without it dcmtk leaves Nagle's algorithm on, and on loopback each instance of
  dcmtk storescp's waited for a 40 ms delayed ACK).
- The time is from the senders' start to the last sender's exit (every instance acknowledged). Medians over
  `--repeats`; the order of the receivers rotates between repeats. After each run the file system is synced and
  a second waited, so that no run shares the device with the previous one's writeback; the runs' folders are
  deleted at the end (deleted between runs, their blocks' discards slowed the next run by up to 2x).
- The fsync latency of `--root`'s device (a 32 KB file written and fsynced, median of 30) is printed with the
  table: immunode's single-association time is bounded by it (a file fsync and an index commit per instance,
  while the sender waits for each answer), dcmtk's and pynetdicom's are not.

Usage: python benchmarks/ingest.py [--instances N] [--repeats R] [--associations 1 4] [--root DIR] [--synthetic]
       [--small]   (--small: the CI-sized run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
RECEIVERS = ("dcmtk storescp", "bare pynetdicom", "immunode")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SETTLE_S = 1.0  # after each run, once everything is synced (`settle_disk`)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


# --- the instances -----------------------------------------------------------------------------------------


def real_instances(folder: Path, count: int) -> list[Path]:
    """sts_002 and sts_003 (CT and PET slices), copied with new UIDs until `count` instances."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = [
        path
        for case in ("sts_002", "sts_003")
        for modality in ("CT", "PET")
        for path in sorted((DATA / case / modality).glob("*.dcm"))
        if "RTSTRUCT" not in path.name
    ]
    if not sources:
        raise SystemExit(f"no real PET/CT under {DATA} (sts_002, sts_003): use --synthetic")
    written: list[Path] = []
    copy = 0
    while len(written) < count:
        renamed: dict[str, str] = {}
        for source in sources[: count - len(written)]:
            ds = pydicom.dcmread(source)
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
                if keyword in ds:
                    old = str(ds[keyword].value)
                    ds[keyword].value = renamed.setdefault(old, generate_uid())
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"{ds.PatientID}-{copy}"
            target = folder / f"copy{copy:03d}" / f"{len(written):05d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            written.append(target)
        copy += 1
    return written


def synthetic_instances(folder: Path, count: int) -> list[Path]:
    """A synthetic PET/CT (tests.synthetic) of about `count` instances (half PET, half CT, 192 x 192)."""
    from tests.synthetic import write_study

    study = write_study(folder, shape_zyx=(max(count // 2, 1), 192, 192), lesions=())
    return sorted(list(study.pet_files) + list(study.ct_files))


# --- the receivers ----------------------------------------------------------------------------------------


def serve_bare(port: int, folder: Path) -> None:
    """pynetdicom's documented minimal storage SCP: the received data set written as it came, with its file meta."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10**9))

    def handle_store(event: object) -> int:
        with open(folder / f"{next(counter)}.dcm", "wb") as handle:
            handle.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle_store)])


@dataclass
class Receiver:
    name: str
    process: subprocess.Popen
    port: int
    called: str
    folder: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def start_receiver(name: str, work: Path, associations: int) -> Receiver:
    port = free_port()
    folder = work / "received"
    folder.mkdir(parents=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if name == "dcmtk storescp":
        mode = ["--fork"] if associations > 1 else []
        command = ["storescp", "--aetitle", "DCMTK", *mode, "--output-directory", str(folder), str(port)]
        process = subprocess.Popen(command, env=DCMTK_ENV, **quiet)
        called = "DCMTK"
    elif name == "bare pynetdicom":
        process = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port), str(folder)], **quiet)
        called = "BARE"
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", "immunode.cli", "--config", str(_node_config(work, port)), "serve"],
            cwd=REPO,
            **quiet,
        )
        called = "IMMUNODE"
    receiver = Receiver(name, process, port, called, folder)
    try:
        wait_for_port(port, process)
    except RuntimeError:
        receiver.stop()
        raise
    return receiver


def _node_config(work: Path, port: int) -> Path:
    import yaml

    from immunode.config import parse_settings

    settings = parse_settings(
        {
            "node": {"host": "127.0.0.1", "port": port, "max_associations": 16},
            "peers": {"accept_any": True},
            "storage": {"root": str(work / "node"), "min_free_mb": 0},
            "routing": {"rules": [], "study_stable_s": 3600},  # receive only: no routing, no analysis
            "monitoring": {"enabled": False},
            "logging": {"level": "WARNING"},
        }
    )
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def received_count(receiver: Receiver, work: Path) -> int:
    if receiver.name != "immunode":
        return sum(1 for p in receiver.folder.rglob("*") if p.is_file())
    from sqlalchemy import create_engine, func, select

    from storage.schema import Instance

    engine = create_engine(f"sqlite:///{work / 'node' / 'index.sqlite3'}")
    try:
        with engine.connect() as connection:
            return connection.scalar(select(func.count(Instance.id)))
    finally:
        engine.dispose()


# --- the run ----------------------------------------------------------------------------------------------


def send(receiver: Receiver, files: list[Path], associations: int) -> float:
    parts = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aet", "STORESCU", "-aec", receiver.called, "127.0.0.1", str(receiver.port)]
            + [str(p) for p in part],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in parts
    ]
    failures = [s.communicate()[1] for s in senders if s.wait() != 0]
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"storescu to {receiver.name} failed: {failures[0][-2000:]}")
    return elapsed


def one_run(name: str, files: list[Path], associations: int, root: Path) -> float:
    """One receiver's run in a fresh folder under `root`, which the caller deletes after the last run: deleting
    it here would make the device discard the freed blocks while the next receiver runs."""
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=root))
    try:
        receiver = start_receiver(name, work, associations)
        try:
            seconds = send(receiver, files, associations)
            count = received_count(receiver, work)
        finally:
            receiver.stop()
        if count != len(files):
            raise RuntimeError(f"{name}: {count} of {len(files)} instances received")
        return seconds
    finally:
        settle_disk()


def settle_disk() -> None:
    """Let the device finish the previous run's writes and deletions (writeback, journal, discards) before the
    next receiver starts, so that no run pays for another's."""
    os.sync()
    time.sleep(SETTLE_S)


def fsync_latency_ms(root: Path, samples: int = 30) -> float:
    """Median time to write a 32 KB file and fsync it on `root`'s device."""
    payload = os.urandom(32 * 1024)
    times = []
    with tempfile.TemporaryDirectory(dir=root) as folder:
        for number in range(samples):
            started = time.perf_counter()
            with open(Path(folder) / f"{number}", "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=390)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--root", type=Path, default=None, help="where receivers store (default: a temp folder)")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic PET/CT instead of the real one")
    parser.add_argument("--small", action="store_true", help="the CI-sized run (40 instances, once)")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]))
        return 0
    if args.small:
        args.instances, args.repeats = 40, 1
        global SETTLE_S
        SETTLE_S = 0.0
    for tool in ("storescp", "storescu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (dcmtk) is not installed")
    if args.root is not None:
        args.root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ingest-runs-", dir=args.root or tempfile.gettempdir()))
    try:
        return run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="ingest-data-") as data:
        make = synthetic_instances if args.synthetic else real_instances
        files = make(Path(data), args.instances)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        timings: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            order = RECEIVERS[repeat % 3 :] + RECEIVERS[: repeat % 3]
            for associations in args.associations:
                for name in order:
                    seconds = one_run(name, files, associations, root)
                    timings.setdefault((name, associations), []).append(seconds)
                    print(f"  run {repeat + 1}: {name}, {associations} association(s): {seconds:.2f} s", flush=True)
        latency = fsync_latency_ms(root)
    source = "synthetic PET/CT" if args.synthetic else "real PET/CT (sts_002 + sts_003, repeated with new UIDs)"
    print(
        f"\nIngest of {len(files)} instances ({megabytes:.1f} MB, {source}), dcmtk storescu with TCP_NODELAY, "
        f"median of {args.repeats}; storage on {root} (fsync of a 32 KB file: {latency:.2f} ms):"
    )
    print("| receiver | associations | seconds | instances/s | vs dcmtk storescp |")
    print("|---|---:|---:|---:|---:|")
    for associations in args.associations:
        dcmtk = statistics.median(timings[("dcmtk storescp", associations)])
        for name in RECEIVERS:
            seconds = statistics.median(timings[(name, associations)])
            print(f"| {name} | {associations} | {seconds:.2f} | {len(files) / seconds:.0f} | {seconds / dcmtk:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
