"""Faults in the middle of work, at full size (the tests run the same faults small): `immunode serve` in its own
process, dcmtk storescu as the scanners, dcmtk storescp as the PACS, a PostgreSQL server of the run's own.

1. kill -9 mid-transfer, in a loop: the node killed while storescu sends a study; restarted. Every instance
   acknowledged must be indexed and whole after the restart, and nothing in flight may be left in incoming/.
2. PostgreSQL stopped during a job (and during a receive): the job finishes while the index is away. With the
   default `workers.record_retry_s` its outcome is recorded once the index returns; with a short one the node
   hands it back to the queue and it runs again. Each result must reach the PACS once; the log is counted.
3. A small disk filling up under several senders at once: every instance must get a status (success or 0xA700),
   no association may be dropped, nothing partial left; once there is room, what was refused is resent.

Usage: python benchmarks/faults.py [--small] [--loops N] [--outage-s S] [--disk-mb M] [--only kill,outage,disk]
(--small: the CI-sized run; the figures in docs/reliability-faults.md come from a run without it). Needs root for
the tmpfs (skipped otherwise) and PostgreSQL's binaries for scenario 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.states import JobState  # noqa: E402
from immunode.config import Settings, parse_settings  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.files import FileLayout  # noqa: E402
from storage.schema import Delivery, DeliveryState, Instance, Job  # noqa: E402
from tests.conftest import PostgresServer, StoreSCP, free_port, serve, wait_until  # noqa: E402
from tests.synthetic import DEFAULT_LESIONS, write_study  # noqa: E402

ANSWER = re.compile(r"Sending file: (\S+)|Received Store Response \(([^)]*)\)")


def settings_for(work: Path, **sections: dict | list) -> Settings:
    data: dict = {
        "node": {"ae_title": "IMMUNODE", "host": "127.0.0.1", "port": free_port()},
        "peers": {"allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]},
        "storage": {"root": str(work / "store"), "min_free_mb": 0},
        "routing": {
            "study_stable_s": 1.0,
            "poll_interval_s": 0.3,
            "rules": [{"name": "pet-lesions", "pipeline": "pet_quant", "series": {"modality": "PT"}}],
        },
        "workers": {"processes": 1},
        "dispatch": {"max_attempts": 6, "backoff_initial_s": 1, "backoff_max_s": 5, "timeout_s": 10},
        "monitoring": {"port": 0},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_settings(data)


def storescu(port: int, files: list[Path], log: Path) -> subprocess.Popen:
    """storescu sending `files` in one association, --no-halt (it goes on after a failure status), verbose."""
    handle = log.open("w")
    process = subprocess.Popen(
        ["storescu", "-v", "-nh", "-aet", "STORESCU", "-aec", "IMMUNODE", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    return process


def answers(log: Path) -> dict[str, str]:
    """File sent -> the status storescu received for it (files without an answer are left out)."""
    found: dict[str, str] = {}
    current = None
    for sent, status in ANSWER.findall(log.read_text(errors="replace")):
        if sent:
            current = sent
        elif current is not None:
            found[current] = status
            current = None
    return found


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def intact(database_url: str, layout: FileLayout, sources: dict[str, Path]) -> tuple[int, int]:
    """(indexed and whole, indexed but not whole) among the SOP Instance UIDs of `sources`: the stored file's
    pixel data is the source's."""
    database = Database(database_url, migrate=False)
    try:
        with database.session() as session:
            rows = dict(
                session.execute(
                    select(Instance.sop_instance_uid, Instance.path).where(Instance.sop_instance_uid.in_(list(sources)))
                ).all()
            )
    finally:
        database.dispose()
    good = bad = 0
    for uid, path in rows.items():
        stored = pydicom.dcmread(layout.absolute(path))
        source = pydicom.dcmread(sources[uid])
        if stored.PixelData == source.PixelData and str(stored.SOPInstanceUID) == uid:
            good += 1
        else:
            bad += 1
    return good, bad


def uids_of(files: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


# --- 1. kill -9 mid-transfer ------------------------------------------------------------------------------------


def kill_loops(work: Path, loops: int, instances: int, seed: int = 20) -> dict:
    rng = random.Random(seed)
    settings = settings_for(work / "kill")
    layout = FileLayout(settings.storage.root)
    acked = found = damaged = at_kill = left_in_flight = 0
    restart_s = []
    for loop in range(loops):
        study = write_study(
            work / "kill" / f"send{loop}",
            with_ct=False,
            shape_zyx=(instances, 512, 512),
            lesions=(),
            patient_id=f"K{loop}",
        )
        files = list(study.pet_files)
        node = serve(work / "kill", "node", settings)
        sender = storescu(settings.node.port, files, work / "kill" / f"storescu{loop}.log")
        target = rng.randint(1, instances - 1)
        database = Database(settings.database_url, migrate=False)
        try:
            # Mid-transfer: past the target, and a data set arriving (its file in incoming/).
            wait_until(
                lambda: (
                    (_count(database, Instance.id) >= target and any(layout.receiving.iterdir()))
                    or sender.poll() is not None
                ),
                300,
                0.002,
            )
        finally:
            database.dispose()
        node.kill()  # kill -9, mid-transfer
        node.wait(30)
        sender.wait(60)
        at_kill += sum(1 for _ in layout.receiving.iterdir())
        ok = [f for f, status in answers(work / "kill" / f"storescu{loop}.log").items() if status == "Success"]
        settings = settings.model_copy(update={"node": settings.node.model_copy(update={"port": free_port()})})
        started = time.perf_counter()
        node = serve(work / "kill", "node", settings)
        restart_s.append(time.perf_counter() - started)
        left_in_flight += sum(1 for _ in layout.receiving.iterdir())
        good, bad = intact(settings.database_url, layout, uids_of([Path(f) for f in ok]))
        acked += len(ok)
        found += good
        damaged += bad
        stop(node)
    return {
        "loops": loops,
        "acknowledged": acked,
        "acknowledged and intact after restart": found,
        "acknowledged but damaged": damaged,
        "acknowledged but missing": acked - found - damaged,
        "files in flight at the kill": at_kill,
        "files in flight left after restart": left_in_flight,
        "restart until listening, median s": round(statistics.median(restart_s), 1),
    }


def _count(database: Database, column: object, *where: object) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count(column)).where(*where)) or 0)


# --- 2. PostgreSQL stopped during a job -------------------------------------------------------------------------


def outage_during_job(work: Path, outage_s: float, record_retry_s: float, name: str) -> dict:
    """The index stopped while a job analyses (and while a second study arrives); started again `outage_s` later."""
    folder = work / name
    folder.mkdir(parents=True)
    with ExitStack() as cleanup:
        server = PostgresServer()
        cleanup.callback(server.remove)
        pacs = StoreSCP(folder / "pacs", free_port())
        pacs.start()
        cleanup.callback(pacs.stop)
        settings = settings_for(
            folder,
            database={"url": server.url},
            workers={"record_retry_s": record_retry_s},
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        )
        root = Path(settings.storage.root)
        log = folder / "node.log"
        node = serve(folder, "node", settings)
        cleanup.callback(stop, node)
        database = Database(server.url, migrate=False)
        cleanup.callback(database.dispose)
        study = write_study(folder / "study", shape_zyx=(70, 96, 96), lesions=DEFAULT_LESIONS[:3], patient_id="PGJ")
        second = write_study(folder / "second", shape_zyx=(40, 96, 96), lesions=(), patient_id="PGR", with_ct=False)
        subprocess.run(
            ["storescu", "-aet", "STORESCU", "-aec", "IMMUNODE", "127.0.0.1", str(settings.node.port)]
            + [str(f) for f in study.pet_files],
            check=True,
            capture_output=True,
        )
        wait_until(lambda: any(root.glob("pet_quant-*")), 300, 0.05)  # analysing: its inputs were read
        lines_before = len(log.read_text().splitlines())
        server.stop()
        stopped = time.perf_counter()
        receive = storescu(settings.node.port, list(second.pet_files), folder / "during.log")
        receive.wait(300)
        during = Counter(answers(folder / "during.log").values())
        # The job finishes while the index is away (its SEG and SR written, its outcome not recorded) ...
        wait_until(lambda: "job 1: outcome not recorded yet" in log.read_text(), 900, 0.2)
        if record_retry_s < outage_s:  # ... and its worker gives up before the index returns
            wait_until(lambda: "goes back to the queue when it answers" in log.read_text(), 900, 0.2)
        time.sleep(max(0.0, outage_s - (time.perf_counter() - stopped)))  # the outage's length is the experiment
        server.start()
        back = time.perf_counter()
        lasted = back - stopped
        wait_until(lambda: _job_state(database) is JobState.SUCCEEDED, 900, 0.2)
        recorded_after_s = time.perf_counter() - back
        with database.session() as session:
            job = session.scalar(select(Job))
            attempts = job.attempts
            total = session.scalar(select(func.count(Delivery.id)))
        wait_until(lambda: _count(database, Delivery.id, Delivery.state == DeliveryState.SENT) == total, 300)
        wait_until(lambda: len(pacs.received()) >= total, 60)
        received = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs.received())
        outage_lines = log.read_text().splitlines()[lines_before:]
    refusals = sum("refused with 0xA700" in line for line in outage_lines)
    return {
        "outage s": round(lasted, 1),
        "workers.record_retry_s": record_retry_s,
        "job": "handed back, ran again"
        if any("goes back to the queue when it answers" in line for line in outage_lines)
        else "recorded once the index answered",
        "job attempts counted": attempts,
        "index back -> job SUCCEEDED, s": round(recorded_after_s, 1),
        "results sent / received by the PACS / received twice": f"{total} / {len(received)} / "
        f"{sum(1 for c in received.values() if c > 1)}",
        "instances sent during the outage: success / 0xA700 / no answer": f"{during.get('Success', 0)} / "
        f"{during.get('Refused: OutOfResources', 0)} / {len(second.pet_files) - sum(during.values())}",
        "log lines from the outage on: C-STORE refusals (one per instance) / others": f"{refusals} / "
        f"{len(outage_lines) - refusals}",
        "of them ERROR / Traceback": f"{sum(' ERROR ' in line for line in outage_lines)} / "
        f"{sum('Traceback' in line for line in outage_lines)}",
    }


def _job_state(database: Database) -> JobState | None:
    try:
        with database.session() as session:
            return session.scalar(select(Job.state))
    except Exception:  # the index still starting: not yet
        return None


# --- 3. a small disk filling up ---------------------------------------------------------------------------------


def disk_fills(work: Path, disk_mb: int, senders: int, per_sender: int) -> dict:
    folder = work / "disk"
    mount = folder / "mnt"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk_mb}m", "tmpfs", str(mount)], check=True)
    try:
        settings = settings_for(folder, storage={"root": str(mount / "store")})  # the index on the same disk
        node = serve(folder, "node", settings)
        try:
            studies = [
                list(
                    write_study(
                        folder / f"send{i}",
                        with_ct=False,
                        shape_zyx=(per_sender, 256, 256),
                        lesions=(),
                        patient_id=f"D{i}",
                    ).pet_files
                )
                for i in range(senders)
            ]
            started = time.perf_counter()
            processes = [storescu(settings.node.port, files, folder / f"s{i}.log") for i, files in enumerate(studies)]
            codes = [p.wait(600) for p in processes]
            elapsed = time.perf_counter() - started
            results = [answers(folder / f"s{i}.log") for i in range(senders)]
            statuses = Counter(status for result in results for status in result.values())
            aborted = sum("Abort" in (folder / f"s{i}.log").read_text() for i in range(senders))
            layout = FileLayout(settings.storage.root)
            in_flight = sum(1 for _ in layout.receiving.iterdir())
            database = Database(settings.database_url, migrate=False)
            try:
                with database.session() as session:
                    indexed = set(session.scalars(select(Instance.path)).all())
            finally:
                database.dispose()
            orphans = sum(1 for p in layout.object_files() if layout.relative(p) not in indexed)
            node_log = (folder / "node.log").read_text().splitlines()
            refusal_lines = sum("dicom_node.scp: C-STORE from" in line for line in node_log)
            last_resort = sum("neither indexed nor spooled" in line for line in node_log)
            full = sum("No space left" in line or "disk is full" in line for line in node_log)
            subprocess.run(["mount", "-o", "remount,size=2g", str(mount)], check=True)
            refused = [Path(f) for result in results for f, status in result.items() if status != "Success"]
            resend = storescu(settings.node.port, refused, folder / "resend.log")
            resend.wait(600)
            resent = Counter(answers(folder / "resend.log").values())
            sources = uids_of([f for files in studies for f in files])
            good, bad = intact(settings.database_url, layout, sources)
        finally:
            stop(node)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    sent = senders * per_sender
    return {
        "disk": f"{disk_mb} MB tmpfs (files and index)",
        "senders x instances (256x256 PET, 128 KB)": f"{senders} x {per_sender}",
        "answered / sent": f"{sum(statuses.values())} / {sent}",
        "success / 0xA700 / other": f"{statuses.get('Success', 0)} / {statuses.get('Refused: OutOfResources', 0)} / "
        f"{sum(statuses.values()) - statuses.get('Success', 0) - statuses.get('Refused: OutOfResources', 0)}",
        "associations aborted; storescu exit codes": f"{aborted}; {sorted(set(codes))}",
        "files left in incoming/; files in objects/ without index row": f"{in_flight}; {orphans}",
        "log lines: C-STORE refusals / refusal records neither indexed nor spooled / others naming the full disk": (
            f"{refusal_lines} / {last_resort} / {full - refusal_lines - last_resort}"
        ),
        "receive time until full and answered, s": round(elapsed, 1),
        "refused then resent with room: success": f"{resent.get('Success', 0)} / {len(refused)}",
        "all instances indexed and intact at the end": f"{good} / {sent} ({bad} damaged)",
    }


def table(title: str, rows: dict) -> str:
    lines = [f"### {title}", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the CI-sized run")
    parser.add_argument("--loops", type=int, default=None, help="kill -9 loops (default 15; small 1)")
    parser.add_argument("--outage-s", type=float, default=None, help="PostgreSQL outage (default 30; small 3)")
    parser.add_argument("--disk-mb", type=int, default=None, help="tmpfs size (default 20; small 2)")
    parser.add_argument("--only", default="kill,outage,disk", help="scenarios to run, of kill, outage, disk")
    arguments = parser.parse_args()
    only = set(arguments.only.split(","))
    small = arguments.small
    loops = arguments.loops or (1 if small else 15)
    outage_s = arguments.outage_s or (3.0 if small else 30.0)
    disk_mb = arguments.disk_mb or (2 if small else 20)
    work = Path(tempfile.mkdtemp(prefix="immunode-faults-"))
    print(f"# Faults benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    machine = f"{platform.node()}, {os.cpu_count()} CPU(s), {platform.platform()}"
    print(f"machine: {machine}, Python {platform.python_version()}\n")
    try:
        if "kill" in only:
            print(table(f"kill -9 mid-transfer, {loops} loop(s)", kill_loops(work, loops, 12 if small else 60)))
        if "outage" not in only:
            pass
        elif list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
            for name, retry in (("recorded", 300.0), ("handed-back", outage_s / 3)):
                print(
                    table(
                        f"PostgreSQL stopped {outage_s:.0f} s during a job ({name})",
                        outage_during_job(work, outage_s, retry, name),
                    )
                )
        else:
            print("PostgreSQL is not installed: scenario 2 skipped\n")
        if "disk" not in only:
            pass
        elif os.geteuid() == 0:
            senders, per_sender = (2, 10) if small else (4, 100)
            print(table(f"a {disk_mb} MB disk filling up", disk_fills(work, disk_mb, senders, per_sender)))
        else:
            print("not root: no tmpfs, scenario 3 skipped\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
