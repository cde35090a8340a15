"""Node operations: serve, audit, retry, check-config, purge, hash-password, process."""

from __future__ import annotations

import argparse
import faulthandler
import getpass
import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common.version import __version__
from immunode.cli.common import config_path, index_database, index_session, settings
from immunode.config import ConfigError, load_settings
from immunode.logging_setup import configure_logging
from storage.schema import utcnow

logger = logging.getLogger(__name__)


def cmd_check_config(args: argparse.Namespace) -> int:
    """The start-up checks of `serve` (immunode.startup), each problem naming its key and file."""
    from immunode.startup import check_startup

    path = Path(args.file) if args.file else config_path(args)
    loaded = load_settings(path)
    checked = check_startup(loaded, ports=not args.skip_ports)
    print(f"{path or 'embedded defaults'}: {'OK' if not checked.problems else 'serve would refuse to start'}")
    print(f"  node {loaded.node.ae_title} on port {loaded.node.port}; database {loaded.database_url}")
    print(
        f"  {len(loaded.peers.allowed)} allowed peer(s), {len(loaded.destinations)} destination(s), "
        f"{len(loaded.routing.rules)} routing rule(s)"
    )
    for note in checked.notes:
        print(f"  {note}")
    for warning in checked.warnings:
        print(f"  warning: {warning}")
    for problem in checked.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if checked.problems else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from immunode.service import Node
    from immunode.startup import check_startup

    config = settings(args)
    if config.storage.private:
        # Before anything is created: storage root, index, log and outputs for the service user only.
        os.umask(0o077)
    checked = check_startup(config)  # exactly what `check-config` runs
    checked.raise_problems()
    configure_logging(config.logging)
    if config.storage.private and config.logging.file is not None:
        config.logging.file.chmod(0o600)  # a log file made before the setting was on
    node = Node(config, checked)
    # `kill -USR1 <pid>` writes every thread's stack to standard error (the journal): a node that does not stop or
    # answer can be looked into without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    listening = [f"port {node.port}"] if node.port is not None else []
    listening += [f"TLS port {node.tls_port}"] if node.tls_port is not None else []
    logger.info(
        "immunode %s serving as %s on %s; storage %s",
        __version__,
        config.node.ae_title,
        " and ".join(listening),
        config.storage.root.resolve(),
    )
    try:
        # Waited in short steps: a signal the kernel delivers to another thread of the process only sets CPython's
        # flag, and a main thread blocked in one untimed wait would never run the handler (a SIGTERM was lost
        # so: the node kept serving). Each step returns to the interpreter, which runs pending handlers.
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
    # Everything is recorded (jobs queued to resume, the clean stop): leave now rather than wait for a send to
    # a slow destination or a timer thread to notice.
    logging.shutdown()
    os._exit(0)


def cmd_purge(args: argparse.Namespace) -> int:
    """Retention by hand: what the policy purges now (--dry-run), or purge it when no node runs on the index."""
    from storage import retention, runs
    from storage.files import FileLayout

    config = settings(args)
    policy = config.storage.retention
    if not policy.enabled:
        print("storage.retention sets neither max_age_days nor a watermark: nothing is ever purged")
        return 0
    with index_database(args) as database:
        layout = FileLayout(config.storage.root)
        chosen = retention.plan(policy, database, layout, utcnow())
        for candidate, reason in chosen:
            print(
                f"  {candidate.study_instance_uid}  last instance {candidate.last_received_at:%Y-%m-%d %H:%M:%S}Z  "
                f"{candidate.size_bytes / 2**20:.1f} MB  {reason}"
            )
        total = sum(c.size_bytes for c, _ in chosen) / 2**20
        print(f"{len(chosen)} stud(ies), {total:.1f} MB of instances, due for purging now")
        if args.dry_run or not chosen:
            return 0
        with database.session() as session:
            live = runs.live_runs(session)
        if live:
            print(
                "error: a node is running on this index; it purges on its own every storage.retention.interval_s "
                "(use --dry-run to see what is due)",
                file=sys.stderr,
            )
            return 1
        purged = retention.apply(policy, database, layout)
    print(f"purged {len(purged)} stud(ies), {sum(p.bytes_freed for p in purged) / 2**20:.1f} MB freed")
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
    check = commands.add_parser(
        "check-config", help="the start-up checks of serve (config, files, weights, certificates, ports, database)"
    )
    check.add_argument("file", nargs="?")
    check.add_argument(
        "--skip-ports", action="store_true", help="leave out the port checks (a config checked while the node runs)"
    )
    check.set_defaults(handler=cmd_check_config)
    purge = commands.add_parser("purge", help="retention by hand: what storage.retention purges now, or purge it")
    purge.add_argument("--dry-run", action="store_true", help="list what is due, delete nothing")
    purge.set_defaults(handler=cmd_purge)
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
