"""`immunode status`: the status snapshot (`immunode.snapshot`, the same the status page shows) as text: the
health line, one page of the study list (search, filter, paging), then jobs, deliveries, conflicts, quarantine,
refusals and problems."""

from __future__ import annotations

import argparse
from datetime import date

from common.states import JobState
from immunode.cli.common import index_database, settings
from immunode.config import ConfigError
from immunode.snapshot import (
    StatusSnapshot,
    delivery_detail,
    health_line,
    job_detail,
    results_text,
    take_snapshot,
    when,
)
from storage.overview import MAX_PAGE_SIZE, StudyCondition, StudyQuery, StudyRow
from storage.schema import DeliveryState


def cmd_status(args: argparse.Namespace) -> int:
    config = settings(args)
    try:
        query = StudyQuery(
            patient_id=args.patient,
            accession_number=args.accession,
            date_from=args.date_from,
            date_to=args.date_to,
            condition=args.state,
            page=args.page,
            page_size=args.page_size,
        )
    except ValueError as error:
        raise ConfigError(f"status: {error}") from None
    with index_database(args) as database:
        snapshot = take_snapshot(config, database, query, args.limit)
    print_snapshot(snapshot)
    return 0


def print_snapshot(snapshot: StatusSnapshot) -> None:
    now = snapshot.taken_at
    print(f"Health: {health_line(snapshot.health, now)}")
    for reason in snapshot.health.reasons:
        print(f"  - {reason}")
    _print_studies(snapshot)
    print("Jobs")
    print("  " + ", ".join(f"{s.value} {snapshot.job_counts.get(s, 0)}" for s in JobState))
    for job in snapshot.jobs:
        line = f"  job {job.job_id:<5} {job.pipeline:<12} {job.state.value:<16} study {job.study_instance_uid}"
        if job.state is JobState.FAILED:
            line += f"\n      reason: {job.error}"
        if job.pairing is not None:
            line += f"\n      baseline: {job.pairing.outcome.value} {job.pairing.reason}"
            if job.state is JobState.WAITING_BASELINE and job.waiting_until:
                line += f" (waiting for baseline until {job.waiting_until:%Y-%m-%d %H:%M:%S}Z)"
        print(line)
    print("Result versions (each supersedes the one before)")
    for chain in snapshot.versions:
        print(f"  study {chain.study_instance_uid}")
        for v in chain.versions:
            print(f"    {v.pipeline} v{v.number} job {v.job_id} {v.written_at:%Y-%m-%d %H:%M:%S}Z {v.line()}")
    print("Deliveries")
    print("  " + ", ".join(f"{s.value} {snapshot.delivery_counts.get(s, 0)}" for s in DeliveryState))
    for delivery in snapshot.unsent:
        next_attempt = f" next {when(delivery.next_attempt_at, now)};" if delivery.next_attempt_at else ""
        print(
            f"  delivery {delivery.delivery_id:<5} {delivery.kind.value:<3} {delivery.sop_instance_uid} -> "
            f"{delivery.destination}: {delivery.state}, {delivery.attempts} attempt(s);{next_attempt} "
            f"{delivery.last_error or 'not yet attempted'}"
        )
    _print_integrity(snapshot)
    print("Recent rejected or failed associations")
    for a in snapshot.refused:
        print(f"  {a.at:%Y-%m-%d %H:%M:%S}Z {a.line()}")
    print("Recent problems")
    for event in snapshot.problems:
        study = f" [{event.study_instance_uid}]" if event.study_instance_uid else ""
        print(f"  {event.at:%Y-%m-%d %H:%M:%S}Z {event.level}{study} {event.message}")


def _print_studies(snapshot: StatusSnapshot) -> None:
    page = snapshot.studies
    if page is None:
        print("Studies: the index did not answer")
        return
    query = page.query
    print(f"Studies ({page.total} matching; page {query.page} of {page.pages}, newest last instance first)")
    for row in page.rows:
        _print_study(row, snapshot)


def _print_study(row: StudyRow, snapshot: StatusSnapshot) -> None:
    now = snapshot.taken_at
    patient = row.patient_id + (f" (issuer {row.issuer_of_patient_id})" if row.issuer_of_patient_id else "")
    if snapshot.patient_names:
        patient += f" {row.patient_name!r}"
    when_taken = row.study_date.isoformat() if row.study_date else "no date"
    description = f" {row.description!r}" if row.description else ""
    print(
        f"  {patient}  acc {row.accession_number or '-'}  {when_taken}  {' '.join(row.modalities) or '-'}{description}"
        f"  {row.instances} instance(s)  {row.condition.value}  last instance {row.last_received_at:%Y-%m-%d %H:%M:%S}Z"
    )
    print(f"      study {row.study_instance_uid} rev {row.revision}")
    for job in row.jobs:
        detail = job_detail(job, snapshot.max_job_attempts, now)
        print(f"      {job.pipeline} {job.state.value}" + (f": {detail}" if detail else ""))
    if results_text(row):
        print(f"      results: {results_text(row)}")
    for delivery in row.deliveries:
        print(f"      {delivery.kind.value} -> {delivery.destination}: {delivery_detail(delivery, now)}")


def _print_integrity(snapshot: StatusSnapshot) -> None:
    print("Identity conflicts (instances refused, not merged)")
    total, conflicts = snapshot.conflicts
    print(f"  {total} in all" + ("" if total else "; none"))
    for c in conflicts:
        print(
            f"  {c.at:%Y-%m-%d %H:%M:%S}Z {c.kind.value} study {c.study_instance_uid} instance "
            f"{c.sop_instance_uid}: named {c.received}, the index holds {c.indexed}"
        )
    print("Quarantine (files found without an index row that could not be indexed)")
    total, files = snapshot.quarantined
    run = snapshot.latest_run
    if run is not None:
        print(
            f"  this run started {run.started_at:%Y-%m-%d %H:%M:%S}Z on {run.host}: reconciliation indexed "
            f"{run.orphans_indexed} and quarantined {run.orphans_quarantined} file(s); "
            f"{run.unclean_runs} earlier run(s) ended without a clean stop"
        )
    print(f"  {total} file(s) in quarantine")
    for q in files:
        print(f"  {q.at:%Y-%m-%d %H:%M:%S}Z {q.path} {q.sop_instance_uid}: {q.reason}")
    if snapshot.spooled:
        print(f"Spooled records not yet in the index: {snapshot.spooled} (written when the index is available)")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"a number from 1 to {MAX_PAGE_SIZE}")
    return int(text)


def register(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser(
        "status", help="health, the study list (search, filter, paging), jobs, deliveries and failures with reasons"
    )
    status.add_argument("--patient", default="", help="studies whose Patient ID contains this (any case)")
    status.add_argument("--accession", default="", help="studies whose Accession Number contains this")
    status.add_argument("--from", dest="date_from", type=_day, help="Study Date on or after (YYYY-MM-DD)")
    status.add_argument("--to", dest="date_to", type=_day, help="Study Date on or before (YYYY-MM-DD)")
    status.add_argument(
        "--state", type=StudyCondition, choices=list(StudyCondition), metavar="|".join(c.value for c in StudyCondition)
    )
    status.add_argument("--page", type=int, default=1)
    status.add_argument("--page-size", type=_page_size, default=25)
    status.add_argument("--limit", type=int, default=20, help="entries of the other sections")
    status.set_defaults(handler=cmd_status)
