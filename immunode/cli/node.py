"""Node operations: serve, status, audit, retry, check-config, hash-password, process."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common.states import JobState
from common.version import __version__
from immunode.cli.common import config_path, index_session, settings
from immunode.config import ConfigError, load_settings
from immunode.logging_setup import configure_logging
from storage.schema import utcnow

logger = logging.getLogger(__name__)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else config_path(args)
    loaded = load_settings(path)
    print(f"{path or 'embedded defaults'}: OK")
    print(f"  node {loaded.node.ae_title} on port {loaded.node.port}; database {loaded.database_url}")
    print(
        f"  {len(loaded.peers.allowed)} allowed peer(s), {len(loaded.destinations)} destination(s), "
        f"{len(loaded.routing.rules)} routing rule(s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from immunode.service import Node

    config = settings(args)
    if config.storage.private:
        # Before anything is created: storage root, index, log and outputs for the service user only.
        os.umask(0o077)
    configure_logging(config.logging)
    if config.storage.private and config.logging.file is not None:
        config.logging.file.chmod(0o600)  # a log file made before the setting was on
    node = Node(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    port = node.start()
    logger.info(
        "immunode %s serving as %s on port %d; storage %s",
        __version__,
        config.node.ae_title,
        port,
        config.storage.root.resolve(),
    )
    try:
        stop.wait()
    finally:
        node.stop()
    # Everything is recorded (jobs queued to resume, the clean stop): leave now rather than wait for a send to
    # a slow destination or a timer thread to notice.
    logging.shutdown()
    os._exit(0)


def cmd_status(args: argparse.Namespace) -> int:
    from storage import audit, deliveries, events, integrity, jobs, runs, studies
    from storage.schema import AuditOutcome, DeliveryState

    config = settings(args)
    with index_session(args) as session:
        print("Studies")
        for study in studies.recent_studies(session, args.limit):
            print(
                f"  {study.study_instance_uid}  {study.state:<9} rev {study.revision}  "
                f"last instance {study.last_received_at:%Y-%m-%d %H:%M:%S}Z"
            )
        print("Jobs")
        counts = jobs.job_counts(session)
        print("  " + ", ".join(f"{s.value} {counts.get(s, 0)}" for s in JobState))
        for job in jobs.recent_jobs(session, args.limit):
            line = f"  job {job.job_id:<5} {job.pipeline:<12} {job.state.value:<16} study {job.study_instance_uid}"
            if job.state is JobState.FAILED:
                line += f"\n      reason: {job.error}"
            if job.pairing is not None:
                line += f"\n      baseline: {job.pairing.outcome.value} {job.pairing.reason}"
                if job.state is JobState.WAITING_BASELINE and job.waiting_until:
                    line += f" (waiting for baseline until {job.waiting_until:%Y-%m-%d %H:%M:%S}Z)"
            print(line)
        print("Deliveries")
        counts = deliveries.delivery_counts(session)
        print("  " + ", ".join(f"{s.value} {counts.get(s, 0)}" for s in DeliveryState))
        for delivery in deliveries.unsent_deliveries(session):
            print(
                f"  delivery {delivery.delivery_id:<5} {delivery.kind.value:<3} {delivery.sop_instance_uid} -> "
                f"{delivery.destination}: {delivery.state}, {delivery.attempts} attempt(s); "
                f"{delivery.last_error or 'not yet attempted'}"
            )
        print("Identity conflicts (instances refused, not merged)")
        total, conflicts = integrity.conflicts(session, args.limit)
        print(f"  {total} in all" + ("" if total else "; none"))
        for c in conflicts:
            print(
                f"  {c.at:%Y-%m-%d %H:%M:%S}Z {c.kind.value} study {c.study_instance_uid} instance "
                f"{c.sop_instance_uid}: named {c.received}, the index holds {c.indexed}"
            )
        print("Quarantine (files found without an index row that could not be indexed)")
        total, files = integrity.quarantined(session, args.limit)
        run = runs.latest_run(session)
        if run is not None:
            print(
                f"  this run started {run.started_at:%Y-%m-%d %H:%M:%S}Z on {run.host}: reconciliation indexed "
                f"{run.orphans_indexed} and quarantined {run.orphans_quarantined} file(s); "
                f"{run.unclean_runs} earlier run(s) ended without a clean stop"
            )
        print(f"  {total} file(s) in quarantine")
        for q in files:
            print(f"  {q.at:%Y-%m-%d %H:%M:%S}Z {q.path} {q.sop_instance_uid}: {q.reason}")
        spooled = audit.spooled_count(config.storage.root / "spool")
        if spooled:
            print(f"Spooled records not yet in the index: {spooled} (written when the index is available)")
        print("Recent rejected or failed associations")
        refused = [a for a in audit.audit_records(session, limit=200) if a.outcome not in (AuditOutcome.COMPLETED,)][
            : args.limit
        ]
        for a in refused:
            print(f"  {a.at:%Y-%m-%d %H:%M:%S}Z {a.line()}")
        print("Recent problems")
        for event in events.recent_events(session, args.limit):
            study = f" [{event.study_instance_uid}]" if event.study_instance_uid else ""
            print(f"  {event.at:%Y-%m-%d %H:%M:%S}Z {event.level}{study} {event.message}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from storage import audit

    since = parse_since(args.since) if args.since else None
    with index_session(args) as session:
        records = audit.audit_records(session, since, args.limit)
    for record in reversed(records):
        ended = f" .. {record.ended_at:%H:%M:%S}Z"
        print(f"{record.at:%Y-%m-%d %H:%M:%S}Z{ended} {record.line().removeprefix('audit ')}")
    if not records:
        print("no audit records" + (f" since {since:%Y-%m-%d %H:%M:%S}Z" if since else ""))
    return 0


UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str) -> datetime:
    """An ISO date or date-time (UTC), or a duration back from now: 30m, 12h, 7d."""
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return utcnow() - timedelta(**{UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r}: give an ISO date/date-time (UTC) or a duration like 12h or 7d") from None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def cmd_retry(args: argparse.Namespace) -> int:
    from storage import deliveries, jobs

    with index_session(args) as session:
        delivered = deliveries.requeue_dead_deliveries(session, args.delivery or None)
        requeued = jobs.requeue_failed_jobs(session, args.job) if args.job else 0
    print(f"re-queued {delivered} delivery(ies) and {requeued} job(s); a running node picks them up at its next poll")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """The value of `monitoring.password_hash` for a password read from standard input (never an argument)."""
    from immunode.monitoring import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        print("error: use at least 12 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from immunode.jobs import process_folder

    config = settings(args)
    configure_logging(config.logging)
    reports, problems = process_folder(config, Path(args.path), Path(args.out))
    for report in reports:
        for file in report.outputs:
            print(f"{file.kind.value}: {file.path}")
        print(f"  {report.summary}")
    for problem in problems:
        print(f"not processed: {problem}", file=sys.stderr)
    print("Research use only: not for diagnosis or treatment decisions.")
    return 0 if reports else 1


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("serve", help="run the DICOM node").set_defaults(handler=cmd_serve)
    status = commands.add_parser("status", help="studies, jobs, deliveries and failures with reasons")
    status.add_argument("--limit", type=int, default=20)
    status.set_defaults(handler=cmd_status)
    check = commands.add_parser("check-config", help="validate a config file and report every problem")
    check.add_argument("file", nargs="?")
    check.set_defaults(handler=cmd_check_config)
    audit = commands.add_parser("audit", help="the audit trail: every association and outbound send, newest last")
    audit.add_argument("--since", help="ISO date/date-time (UTC) or a duration back from now, e.g. 12h, 7d")
    audit.add_argument("--limit", type=int, default=200)
    audit.set_defaults(handler=cmd_audit)
    commands.add_parser(
        "hash-password", help="monitoring.password_hash for a password read from standard input"
    ).set_defaults(handler=cmd_hash_password)
    retry = commands.add_parser("retry", help="re-queue dead deliveries (all, or by id) and failed jobs by id")
    retry.add_argument("--delivery", type=int, action="append", default=[], help="delivery id (repeatable)")
    retry.add_argument("--job", type=int, action="append", default=[], help="failed job id (repeatable)")
    retry.set_defaults(handler=cmd_retry)
    process = commands.add_parser("process", help="run the pipelines on a folder, no network (research use)")
    process.add_argument("path")
    process.add_argument("--out", required=True)
    process.set_defaults(handler=cmd_process)
