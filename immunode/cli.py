"""Command line of the node: serve, status, check-config, retry, process, import, train, evaluate."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.orm import Session

from common.states import JobState
from common.version import __version__
from immunode.config import ConfigError, Settings, load_settings
from immunode.logging_setup import configure_logging
from storage.schema import utcnow

if TYPE_CHECKING:
    from models.expression_transformer import TransformerSettings
    from research.radiomics import DeltaTable
    from research.response import FusionCohort

logger = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_CONFIG_ENV = "IMMUNODE_CONFIG"


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config:
        return Path(args.config)
    if os.environ.get(DEFAULT_CONFIG_ENV):
        return Path(os.environ[DEFAULT_CONFIG_ENV])
    return None


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_config_path(args))


@contextmanager
def _index_session(args: argparse.Namespace) -> Iterator[Session]:
    """A session on the configured index, for the administrative commands."""
    from storage.database import Database

    database = Database(_settings(args).database_url)
    try:
        with database.session() as session:
            yield session
    finally:
        database.dispose()


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else _config_path(args)
    settings = load_settings(path)
    print(f"{path or 'embedded defaults'}: OK")
    print(f"  node {settings.node.ae_title} on port {settings.node.port}; database {settings.database_url}")
    print(
        f"  {len(settings.peers.allowed)} allowed peer(s), {len(settings.destinations)} destination(s), "
        f"{len(settings.routing.rules)} routing rule(s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from immunode.service import Node

    settings = _settings(args)
    if settings.storage.private:
        # Before anything is created: storage root, index, log and outputs for the service user only.
        os.umask(0o077)
    configure_logging(settings.logging)
    if settings.storage.private and settings.logging.file is not None:
        settings.logging.file.chmod(0o600)  # a log file made before the setting was on
    node = Node(settings)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    port = node.start()
    logger.info(
        "immunode %s serving as %s on port %d; storage %s",
        __version__,
        settings.node.ae_title,
        port,
        settings.storage.root.resolve(),
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
    from storage import audit, deliveries, events, integrity, jobs, results, runs, studies
    from storage.schema import AuditOutcome, DeliveryState

    settings = _settings(args)
    with _index_session(args) as session:
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
        print("Result versions (each supersedes the one before)")
        for chain in results.result_versions(session, args.limit):
            print(f"  study {chain.study_instance_uid}")
            for v in chain.versions:
                print(f"    {v.pipeline} v{v.number} job {v.job_id} {v.written_at:%Y-%m-%d %H:%M:%S}Z {v.line()}")
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
        spooled = audit.spooled_count(settings.storage.root / "spool")
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

    since = _parse_since(args.since) if args.since else None
    with _index_session(args) as session:
        records = audit.audit_records(session, since, args.limit)
    for record in reversed(records):
        ended = f" .. {record.ended_at:%H:%M:%S}Z"
        print(f"{record.at:%Y-%m-%d %H:%M:%S}Z{ended} {record.line().removeprefix('audit ')}")
    if not records:
        print("no audit records" + (f" since {since:%Y-%m-%d %H:%M:%S}Z" if since else ""))
    return 0


UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _parse_since(text: str) -> datetime:
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

    with _index_session(args) as session:
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

    settings = _settings(args)
    configure_logging(settings.logging)
    reports, problems = process_folder(settings, Path(args.path), Path(args.out))
    for report in reports:
        for file in report.outputs:
            print(f"{file.kind.value}: {file.path}")
        print(f"  {report.summary}")
    for problem in problems:
        print(f"not processed: {problem}", file=sys.stderr)
    print("Research use only: not for diagnosis or treatment decisions.")
    return 0 if reports else 1


def cmd_cytact_from_expression(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from models.expression_scores import cytact_scores, read_expression

    try:
        table = read_expression(Path(args.file))
        scores = cytact_scores(table)
    except ModelError as error:
        return _print_problems(error)
    print(
        f"# {args.file}: {len(table.samples)} samples, {len(table.genes)} genes, read as {table.orientation}",
        file=sys.stderr,
    )
    lines = ["sample,cytact,ifng6"] + [
        f"{sample},{cytact:.6f},{'' if ifng is None else f'{ifng:.6f}'}" for sample, (cytact, ifng) in scores.items()
    ]
    output = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(output)
    else:
        sys.stdout.write(output)
    return 0


def cmd_analyse_outcomes(args: argparse.Namespace) -> int:
    from research import outcomes
    from research.errors import OutcomeTableError
    from storage import patients, results

    settings = _settings(args)
    try:
        rows = outcomes.read_outcomes(Path(args.outcomes))
        changes = outcomes.read_lesion_changes(Path(args.lesion_changes)) if args.lesion_changes else []
    except (OSError, OutcomeTableError) as error:
        return _print_problems(error)
    with _index_session(args) as session:
        analyses = results.pet_cytact_analyses(session)
        imported = patients.all_patient_data(session)
    starts = {key: data.clinical.therapy_start for key, data in imported.items() if data.clinical}
    starts = {k: v for k, v in starts.items() if v is not None} | {
        (r.patient_id, r.issuer): r.therapy_start for r in rows if r.therapy_start is not None
    }
    selection = outcomes.choose_analyses(analyses, starts, None if args.any_date else args.window_days, args.model)
    table, unmatched = outcomes.joined_table(rows, selection)
    if len(table) < 3:
        reasons = "; ".join(selection.left_out) or "no CytAct results in the node"
        return _print_problems(ValueError(f"only {len(table)} patient(s) of the outcome table usable ({reasons})"))
    cytact = settings.pipelines.pet_quant.cytact
    cutoff, source = args.cutoff, "given (--cutoff)"
    if (
        cutoff is None
        and cytact.cutoffs_weights_sha256
        and f"sha256:{cytact.cutoffs_weights_sha256[:16]}" in selection.model
    ):
        cutoff, source = cytact.low_group_cutoff, "configured for these weights (pipelines.pet_quant.cytact)"
    result = outcomes.analyse(table, cutoff, source, args.variance_cutoff, outcomes.lesion_pairs(selection, changes))
    result.left_out = list(selection.left_out) + [f"{p}: no CytAct result chosen" for p in unmatched]
    report = outcomes.write_report(table, result, selection, Path(args.out))
    print(f"report: {report}")
    return 0


def _delta_table(args: argparse.Namespace) -> DeltaTable:
    """The Δ table of a CSV, or of the node's patients with acquired resistance (courses from the store); patients
    left out are printed with why."""
    from pipelines.ct.pipeline import CT_RADIOMICS
    from research import radiomics as research
    from storage import patients, results

    labels = research.read_labels(Path(args.labels)) if args.labels else None
    if args.table:
        table = research.read_table(Path(args.table))
        return table if labels is None else research.relabelled(table, labels)
    settings = _settings(args)
    with _index_session(args) as session:
        assessments = results.ct_assessments(session, CT_RADIOMICS.name)
        clinical = {key: data.clinical for key, data in patients.all_patient_data(session).items() if data.clinical}
    oligo_max = CT_RADIOMICS.settings(settings.pipelines).oligo_max_lesions
    table, left_out = research.table_from_store(research.patient_courses(assessments, clinical, oligo_max), labels)
    for reason in left_out:
        print(f"  left out {reason}")
    return table


def cmd_analyse_radiomics(args: argparse.Namespace) -> int:
    from research import radiomics as research
    from research.errors import DeltaTableError

    try:
        table = _delta_table(args)
        kept, results = research.analyse(table, Path(args.out), args.permutations, args.seed, args.alpha)
    except (OSError, DeltaTableError) as error:
        return _print_problems(error)
    lines = [
        f"{len(table.patients)} patients ({int(table.systemic.sum())} systemic, {int((~table.systemic).sum())} oligo); "
        f"{len(table.features)} Δ features, {len(kept)} kept after the Spearman |rho| >= 0.99 filter (within each "
        f"dataset, then merged); {sum(r.significant for r in results)} significant in both tests (p < {args.alpha}); "
        f"AUC with {research.POSITIVE_CLASS} as the positive class"
    ] + [
        f"  {r.feature:<60} MW p {r.mann_whitney_p:.3g}  perm p {r.permutation_p:.3g}  "
        f"AUC {r.auc:.2f} ({r.auc_ci_low:.2f}-{r.auc_ci_high:.2f})  median oligo {r.median_oligo:.3g} "
        f"systemic {r.median_systemic:.3g}{'  *' if r.significant else ''}"
        for r in results[: args.top]
    ]
    lines.append(f"written: {Path(args.out) / 'feature_tests.csv'}, {Path(args.out) / 'kept_features.txt'}")
    print("\n".join(lines))
    return 0


def cmd_train_ar_signature(args: argparse.Namespace) -> int:
    from models import ar_signature
    from models.errors import ModelError
    from pipelines.ct.delta import read_published_signature
    from pipelines.errors import SignatureFileError
    from research import radiomics as research
    from research.errors import DeltaTableError

    try:
        table = _delta_table(args)
        if args.features:
            features = [f.strip() for f in args.features.split(",") if f.strip()]
        elif args.published:
            features = [f.name for f in read_published_signature(Path(args.published))]
        else:
            raise DeltaTableError("name the features: --published CSV or --features a,b,...")
        signature, metrics = research.train_signature(table, features)
        out = Path(args.out)
        card = ar_signature.save(signature, out / "ar-signature.pt", args.training_data, args.synthetic, metrics)
    except (OSError, ModelError, DeltaTableError, SignatureFileError, ValueError) as error:
        return _print_problems(error)
    print(
        f"trained on {metrics['patients']} patients ({metrics['left_out_undefined']} left out: undefined Δ); "
        f"training AUC {metrics['training_auc']:.3f} (optimistic: not held out)"
    )
    print(f"weights: {out / 'ar-signature.pt'} sha256 {card.sha256[:16]}; set pipelines.ct_radiomics.ar_signature")
    return 0


def cmd_train_cytact(args: argparse.Namespace) -> int:
    from models.training import TrainingSettings
    from research.cytact_training import train_from_manifest
    from research.errors import ManifestError
    from storage import studies
    from storage.files import FileLayout

    settings = _settings(args)
    configure_logging(settings.logging)
    training = TrainingSettings(epochs=args.epochs, copies_per_lesion=args.copies, folds=args.folds)
    layout = FileLayout(settings.storage.root)

    def stored_series(series_uid: str) -> list[Path]:
        with _index_session(args) as session:
            return studies.series_paths(session, layout, series_uid)

    try:
        card = train_from_manifest(
            Path(args.manifest),
            Path(args.out),
            settings.pipelines.pet_quant,
            training,
            args.name,
            args.version,
            args.training_data,
            args.synthetic,
            stored_series,
        )
    except (ManifestError, OSError) as error:
        return _print_problems(error)
    print(f"weights {Path(args.out) / card.weights_file} sha256 {card.sha256}")
    print(f"pooled out-of-fold Spearman rho {card.metrics['spearman_rho']} ({card.metrics['cross_validation']})")
    print("Set pipelines.pet_quant.cytact.weights to this file to use it.")
    return 0


def _delimiter(text: str | None) -> str | None:
    return {"tab": "\t", "comma": ",", "semicolon": ";"}.get(text or "", text or None)


def _print_problems(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _imported(args: argparse.Namespace, read: Callable[[], T], upsert: Callable[[Session, T], tuple[int, int]]) -> T:
    """Read and check an import file, then store it in one transaction; a rejected file is recorded as rejected
    (ImportRejected propagates with every problem) and nothing of it is stored."""
    from pipelines.errors import ImportRejected
    from storage import patients

    try:
        imported = read()
    except ImportRejected as error:
        with _index_session(args) as session:
            patients.record_import_rejected(session, Path(args.file).name, len(error.problems))
        raise
    with _index_session(args) as session:
        counts = upsert(session, imported)
    print(f"{Path(args.file).name}: stored, {counts[0]} new, {counts[1]} updated")
    return imported


def cmd_import_expression(args: argparse.Namespace) -> int:
    from pipelines.errors import ImportRejected
    from pipelines.omics.imports import read_expression_file
    from storage import patients

    orientation = {"genes-x-samples": "genes x samples", "samples-x-genes": "samples x genes"}.get(args.orientation)
    try:
        imported = _imported(
            args,
            lambda: read_expression_file(
                Path(args.file), Path(args.mapping), args.units, orientation, _delimiter(args.delimiter)
            ),
            patients.upsert_expression,
        )
    except ImportRejected as error:
        return _print_problems(error)
    print(f"{imported.file}: read as {imported.orientation} ({imported.orientation_reason}); units {args.units}")
    if args.units == "counts":
        print("  raw counts: scores use counts per million of the library total (no gene-length correction)")
    print(f"  {len(imported.profiles)} sample(s), {imported.genes} genes")
    for profile in imported.profiles:
        cytact = "n/a (GZMA or PRF1 absent)" if profile.cytact is None else f"{profile.cytact:.3f}"
        ifng = "n/a (a gene absent)" if profile.ifng6 is None else f"{profile.ifng6:.3f}"
        print(f"  {profile.sample_id} -> patient {profile.patient_id}: CytAct {cytact}, IFN-gamma 6-gene {ifng}")
    return 0


def cmd_import_clinical(args: argparse.Namespace) -> int:
    from pipelines.errors import ImportRejected
    from pipelines.omics.imports import read_clinical_file
    from storage import patients

    try:
        imported = _imported(
            args, lambda: read_clinical_file(Path(args.file), _delimiter(args.delimiter)), patients.upsert_clinical
        )
    except ImportRejected as error:
        return _print_problems(error)
    print(f"{imported.file}: {len(imported.records)} patient(s)")
    for record in imported.records:
        dnlr = "n/a" if record.dnlr is None else f"{record.dnlr:.2f}"
        print(f"  {record.patient_id}: dNLR {dnlr}, LIPI {record.lipi or 'n/a (dNLR or LDH/ULN unknown)'}")
    return 0


def cmd_import_blood(args: argparse.Namespace) -> int:
    from pipelines.errors import ImportRejected
    from pipelines.omics.imports import read_blood_file
    from storage import patients

    markers = _settings(args).pipelines.response.blood_markers
    try:
        imported = _imported(
            args, lambda: read_blood_file(Path(args.file), markers, _delimiter(args.delimiter)), patients.upsert_blood
        )
    except ImportRejected as error:
        return _print_problems(error)
    people = {(v.patient_id, v.issuer_of_patient_id) for v in imported.values}
    print(f"{imported.file}: {len(imported.values)} value(s) of {len(people)} patient(s)")
    return 0


def _transformer_settings(args: argparse.Namespace) -> TransformerSettings:
    from models.expression_transformer import TransformerSettings

    return TransformerSettings(
        epochs=args.epochs, layers=args.layers, heads=args.heads, head_dim=args.head_dim, seed=args.seed
    )


def cmd_train_expression(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research.errors import CohortError
    from research.response import train_expression

    configure_logging(_settings(args).logging)
    try:
        result = train_expression(
            Path(args.cohort),
            Path(args.out),
            Path(args.panel) if args.panel else None,
            _transformer_settings(args),
            args.splits,
            args.baselines,
            args.name,
            args.version,
            args.training_data,
            args.synthetic,
            grid=args.grid,
            shap_samples=args.shap_samples,
        )
    except (CohortError, ModelError, OSError) as error:
        return _print_problems(error)
    auc = result.means["transformer"]["roc_auc"]
    print(f"report {result.report}; transformer mean ROC AUC {auc:.3f}")
    print(f"weights {result.weights} sha256 {result.card.sha256}")
    print("Set pipelines.response.expression_weights to this file to use it in the node's reports.")
    return 0


def cmd_evaluate_cytact(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research.cytact_training import evaluate_cytact
    from research.errors import ManifestError
    from storage import studies
    from storage.files import FileLayout

    settings = _settings(args)
    layout = FileLayout(settings.storage.root)

    def stored_series(series_uid: str) -> list[Path]:
        with _index_session(args) as session:
            return studies.series_paths(session, layout, series_uid)

    weights = Path(args.weights) if args.weights else settings.pipelines.pet_quant.cytact.weights
    try:
        result = evaluate_cytact(
            Path(args.manifest), weights, settings.pipelines.pet_quant, Path(args.out), stored_series
        )
    except (ManifestError, ModelError, OSError) as error:
        return _print_problems(error)
    line = f"lesions: Spearman rho {result.lesion_rho:.3f} (p {result.lesion_p:.3g}, n {result.lesions})"
    if result.patient_rho is not None:
        line += f"; patients: rho {result.patient_rho:.3f} (p {result.patient_p:.3g}, n {result.patients})"
    print(f"{line}; report {result.report}")
    return 0


def cmd_evaluate_expression(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research.errors import CohortError
    from research.response import evaluate_expression

    weights = args.weights or _settings(args).pipelines.response.expression_weights
    if weights is None:
        return _print_problems(ValueError("give --weights or set pipelines.response.expression_weights"))
    try:
        values = evaluate_expression(Path(args.cohort), Path(weights), Path(args.out))
    except (CohortError, ModelError, OSError) as error:
        return _print_problems(error)
    print(", ".join(f"{name} {value:.3f}" for name, value in values.items()) + f"; report in {args.out}")
    return 0


def _fusion_inputs(args: argparse.Namespace, expression_weights: Path | None, imaging_dim: int) -> FusionCohort:
    from research.response import fusion_cohort_data, read_fusion_cohort
    from storage import patients, results

    cohort = read_fusion_cohort(Path(args.cohort))
    with _index_session(args) as session:
        data = patients.all_patient_data(session)
        embeddings = results.latest_lesion_embeddings(session)
    mil = getattr(args, "mil_weights", None) or _settings(args).pipelines.histology.mil_weights
    return fusion_cohort_data(cohort, data, embeddings, expression_weights, imaging_dim, Path(mil) if mil else None)


def cmd_train_fusion(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from models.fusion import FusionSettings
    from research.errors import CohortError
    from research.response import train_fusion_model

    settings = _settings(args)
    configure_logging(settings.logging)
    expression_weights = args.expression_weights or settings.pipelines.response.expression_weights
    try:
        cohort = _fusion_inputs(args, Path(expression_weights) if expression_weights else None, args.imaging_dim)
        result = train_fusion_model(
            cohort,
            Path(args.out),
            FusionSettings(epochs=args.epochs, seed=args.seed),
            args.bootstrap,
            args.name,
            args.version,
            args.training_data,
            args.synthetic,
            retrain_expression=args.retrain_expression,
        )
    except (CohortError, ModelError, OSError, ValueError) as error:
        return _print_problems(error)
    for kind, values in result.test_metrics.items():
        low, high = result.intervals[kind]["roc_auc"]
        print(f"{kind}: test ROC AUC {values['roc_auc']:.3f} (95 % CI {low:.3f}-{high:.3f})")
    print(f"report {result.report}; weights {result.weights} sha256 {result.card.sha256}")
    print("Set pipelines.response.fusion_weights to this file to use it in the node's reports.")
    return 0


def cmd_evaluate_fusion(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from models.serving import load_fusion
    from research.errors import CohortError
    from research.response import evaluate_fusion_model

    settings = _settings(args)
    weights = args.weights or settings.pipelines.response.fusion_weights
    if weights is None:
        return _print_problems(ValueError("give --weights or set pipelines.response.fusion_weights"))
    expression_weights = args.expression_weights or settings.pipelines.response.expression_weights
    try:
        _, card = load_fusion(Path(weights))
        cohort = _fusion_inputs(
            args, Path(expression_weights) if expression_weights else None, card.parameters["dims"]["imaging"]
        )
        values = evaluate_fusion_model(cohort, Path(weights), Path(args.out))
    except (CohortError, ModelError, OSError, ValueError) as error:
        return _print_problems(error)
    print(", ".join(f"{name} {value:.3f}" for name, value in values.items()) + f"; report in {args.out}")
    return 0


REPRODUCTION_NOTES = {
    "cytact": [
        "Each patient's pre-treatment PET (the analysis within 60 days before the therapy start) and one CytAct model;",
        "the patient summary over RECIST target lesions; HR of the high group against the low group as the paper.",
        "With weights other than the paper's (the shipped ones are SYNTHETIC), the figures say nothing about it.",
    ],
    "radiomics": [
        "Labels: acquired resistance (progression after response or 6 months of stable disease), oligo (<= 3 new",
        "or progressing lesions) vs systemic, counted at progression; Δ = (T1 - T0)/T0; redundancy filter within each",
        "dataset then merged; a feature counts when Mann-Whitney and the permutation test are both significant (*).",
    ],
    "amu": [
        "Random stratified 80/20 splits with responders duplicated inside each training split only; the paper's",
        "0.941/0.960 came from upsampling before the split, so its held-out 0.672 is the figure to compare with.",
        "The paper's 160-gene panel is in its supplement, not here: --panel takes it; otherwise the substitute panel.",
    ],
    "fusion": [
        "Histology arm as published (whole-slide MIL) but with a site-trained patch encoder, not ImageNet; the PET",
        "CytAct embedding is an added fourth modality. Leakage guard: the expression model is retrained on the",
        "fusion's training split when it was trained on test patients.",
        "The paper's figures are not in this repository: --published NAME=VALUE.",
    ],
}


def cmd_reproduce(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research import reproduce
    from research.errors import ResearchError

    settings = _settings(args)
    configure_logging(settings.logging)
    out = Path(args.out)
    try:
        figures = _reproduce(args, settings, out)
        notes = REPRODUCTION_NOTES[args.method] + (
            ["QUICK settings (--quick): fewer splits, epochs and grid points."] if args.quick else []
        )
        report = reproduce.write_comparison(args.method, figures, notes, out)
    except (ResearchError, ModelError, OSError, ValueError) as error:
        return _print_problems(error)
    print(f"comparison: {report}")
    return 0


def _reproduce(args: argparse.Namespace, settings: Settings, out: Path) -> list:
    from research import reproduce

    if args.method == "cytact":
        from research import outcomes
        from storage import patients, results

        rows = outcomes.read_outcomes(Path(args.cohort))
        with _index_session(args) as session:
            analyses = results.pet_cytact_analyses(session)
            imported = patients.all_patient_data(session)
        starts = {k: d.clinical.therapy_start for k, d in imported.items() if d.clinical and d.clinical.therapy_start}
        starts |= {(r.patient_id, r.issuer): r.therapy_start for r in rows if r.therapy_start is not None}
        selection = outcomes.choose_analyses(analyses, starts, 60)
        table, _ = outcomes.joined_table(rows, selection)
        if len(table) < 3:
            raise ValueError(
                f"only {len(table)} patient(s) usable: {'; '.join(selection.left_out) or 'none in the node'}"
            )
        result = outcomes.analyse(table)
        result.left_out = list(selection.left_out)
        outcomes.write_report(table, result, selection, out)
        return reproduce.cytact_figures(result.cox, result.auc)
    if args.method == "radiomics":
        from research import radiomics as research

        path = args.published_table or settings.pipelines.ct_radiomics.published_signature
        if path is None:
            raise ValueError("give --published-table (the paper's Table 2 as CSV) or configure published_signature")
        _, tests = research.analyse(research.read_table(Path(args.cohort)), out, 200 if args.quick else 1000)
        return reproduce.radiomics_figures(tests, reproduce.published_signature(Path(path)))
    if args.method == "amu":
        from models.expression_transformer import TransformerSettings
        from research.response import train_expression

        quick = TransformerSettings(epochs=5, layers=1) if args.quick else TransformerSettings()
        result = train_expression(
            Path(args.cohort), out, Path(args.panel) if args.panel else None, quick, 2 if args.quick else 5,
            grid="quick" if args.quick else "published",
        )  # fmt: skip
        return reproduce.amu_figures(result.means["transformer"], result.card.metrics["parameters"])
    from models.fusion import FusionSettings
    from research.response import train_fusion_model

    weights = settings.pipelines.response.expression_weights
    cohort = _fusion_inputs(args, Path(weights) if weights else None, args.imaging_dim)
    fusion = FusionSettings(epochs=60) if args.quick else FusionSettings()
    result = train_fusion_model(cohort, out, fusion, 200 if args.quick else 1000, retrain_expression=True)
    return reproduce.fusion_figures(result.test_metrics, reproduce.parse_published(args.published))


def cmd_train_histology(args: argparse.Namespace) -> int:
    """The histology arm on the cohort's stored slides: encoder (self-supervised) and gated-attention MIL."""
    from models.errors import ModelError
    from models.histology import EncoderSettings, MilSettings
    from pipelines.errors import PipelineError
    from research.errors import CohortError
    from research.histology import LabelledSlide, train_histology
    from research.response import label_of, read_fusion_cohort
    from storage import patients, studies
    from storage.files import FileLayout

    settings = _settings(args)
    configure_logging(settings.logging)
    histology = settings.pipelines.histology
    try:
        cohort = read_fusion_cohort(Path(args.cohort))
        with _index_session(args) as session:
            slides = {
                (s.patient_id, s.issuer_of_patient_id): s
                for s in studies.latest_series_by_patient(session, FileLayout(settings.storage.root), "SM")
            }
            data = patients.all_patient_data(session)
        labelled = []
        for number, row in enumerate(cohort, start=2):
            found = slides.get((row.patient_id, row.issuer))
            label = label_of(row, data.get((row.patient_id, row.issuer)), number)
            if found is not None and label is not None:
                labelled.append(
                    LabelledSlide(
                        row.patient_id, row.issuer, found.series.series_instance_uid, found.series.paths, label
                    )
                )
        result = train_histology(
            labelled,
            Path(args.out),
            histology,
            EncoderSettings(base_width=args.base_width, epochs=args.encoder_epochs, seed=args.seed),
            MilSettings(
                embedding_dim=args.mil_dim, attention_dim=args.attention_dim, epochs=args.mil_epochs, seed=args.seed
            ),
            Path(args.encoder) if args.encoder else None,
            args.name,
            args.version,
            args.synthetic,
            args.training_data,
            args.ssl_patches,
        )
    except (CohortError, ModelError, PipelineError, OSError, ValueError) as error:
        return _print_problems(error)
    auc = "n/a" if result.test_auc is None else f"{result.test_auc:.3f}"
    print(f"{len(labelled)} patients with slides; MIL held-out ROC AUC {auc}")
    print(f"encoder: {result.encoder_weights} ({result.encoder.training_data})")
    print(f"MIL: {result.mil_weights}; report: {result.report}")
    print("configure pipelines.histology.encoder_weights and mil_weights to analyse slides with them")
    return 0


def _card_arguments(parser: argparse.ArgumentParser, name: str | None = None) -> None:
    """What a training command writes into the model card of its weights."""
    if name is not None:
        parser.add_argument("--name", default=name)
        parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--training-data", default="", help="description of the cohort for the model card")
    parser.add_argument("--synthetic", action="store_true", help="label the weights as trained on synthetic data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="immunode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"immunode {__version__}")
    parser.add_argument("--config", "-c", help=f"config file (default: ${DEFAULT_CONFIG_ENV} or embedded defaults)")
    commands = parser.add_subparsers(dest="command", required=True)
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
    expression = commands.add_parser(
        "cytact-from-expression", help="CytAct (GZMA, PRF1) and 6-gene IFN-gamma scores from an RNA-seq table"
    )
    expression.add_argument("file")
    expression.add_argument("--out", help="write the CSV here instead of standard output")
    expression.set_defaults(handler=cmd_cytact_from_expression)
    analyse = commands.add_parser(
        "analyse-outcomes", help="join lesion CytAct with an outcome table; statistics and plots (research use)"
    )
    analyse.add_argument(
        "--outcomes", required=True, help="CSV: PatientID, best_response, pfs/os months and events[, therapy_start]"
    )
    analyse.add_argument("--window-days", type=int, default=60, help="the PET within this many days before therapy")
    analyse.add_argument("--any-date", action="store_true", help="the latest PET whatever its date (not the method)")
    analyse.add_argument("--model", help="CytAct model key (default: the most frequent among the patients' PETs)")
    analyse.add_argument("--cutoff", type=float, help="low/high minimum CytAct (default: configured or Youden)")
    analyse.add_argument("--variance-cutoff", type=float, help="heterogeneity cut-off (default: the cohort median)")
    analyse.add_argument("--lesion-changes", help="CSV: PatientID, lesion, size_change_percent")
    analyse.add_argument("--out", default="outcome-report", help="folder for report.md, plots and patients.csv")
    analyse.set_defaults(handler=cmd_analyse_outcomes)
    analyse_radiomics = commands.add_parser(
        "analyse-radiomics",
        help="Δ-radiomics statistics between oligo and systemic progression (research use)",
    )
    analyse_radiomics.add_argument(
        "--table",
        help="CSV: PatientID, IssuerOfPatientID, pattern, Δ features (default: the node's patients with acquired "
        "resistance)",
    )
    analyse_radiomics.add_argument("--labels", help="CSV: PatientID, IssuerOfPatientID, pattern (overrides)")
    analyse_radiomics.add_argument("--out", default="radiomics-analysis")
    analyse_radiomics.add_argument("--permutations", type=int, default=1000)
    analyse_radiomics.add_argument("--seed", type=int, default=0)
    analyse_radiomics.add_argument("--alpha", type=float, default=0.05, help="significance level of both tests")
    analyse_radiomics.add_argument("--top", type=int, default=20, help="features printed")
    analyse_radiomics.set_defaults(handler=cmd_analyse_radiomics)
    train = commands.add_parser("train", help="train a model")
    models = train.add_subparsers(dest="model", required=True)
    signature = models.add_parser("ar-signature", help="oligo vs systemic classifier from Δ radiomic features")
    signature.add_argument("--table", help="CSV as for analyse-radiomics (default: the node's paired follow-ups)")
    signature.add_argument("--labels", help="CSV: PatientID, IssuerOfPatientID, pattern")
    signature.add_argument("--published", help="use the features of the published signature table")
    signature.add_argument("--features", help="comma-separated Δ feature names")
    signature.add_argument("--out", default="ar-signature")
    _card_arguments(signature)
    signature.set_defaults(handler=cmd_train_ar_signature)
    cytact = models.add_parser("cytact", help="the CytAct network from a manifest of PET lesions and targets")
    cytact.add_argument("--manifest", required=True, help="CSV: pet, seed_x/seed_y/seed_z or mask, cytact")
    cytact.add_argument("--out", default="cytact-weights", help="folder for the weights and their card")
    _card_arguments(cytact, "immunode-cytact-cnn")
    cytact.add_argument("--epochs", type=int, default=12)
    cytact.add_argument("--copies", type=int, default=15, help="rotated copies of each lesion per iteration")
    cytact.add_argument("--folds", type=int, default=10)
    cytact.set_defaults(handler=cmd_train_cytact)
    from models import EXPRESSION_BASELINES as BASELINES

    expression = models.add_parser("expression", help="the expression transformer and its baselines on a cohort")
    expression.add_argument("--cohort", required=True, help="CSV/TSV: sample_id, response, then one column per gene")
    expression.add_argument("--out", default="expression-model", help="folder for weights, card and report")
    expression.add_argument("--panel", help="gene panel TSV (default: the shipped immune panel)")
    expression.add_argument("--splits", type=int, default=5)
    expression.add_argument("--epochs", type=int, default=60)
    expression.add_argument("--layers", type=int, default=8)
    expression.add_argument("--heads", type=int, default=8, help="attention heads (the method: 8)")
    expression.add_argument("--head-dim", type=int, default=0, help="each head's width (0: the 20-D embedding)")
    expression.add_argument("--seed", type=int, default=0)
    expression.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    expression.add_argument(
        "--grid", choices=("published", "quick"), default="published", help="random forest / AdaBoost grids"
    )
    expression.add_argument(
        "--shap-samples", type=int, default=0, help="samples the gene importance explains (0: all; seeded subset)"
    )
    _card_arguments(expression, "immunode-expression-transformer")
    expression.set_defaults(handler=cmd_train_expression)
    fusion = models.add_parser("fusion", help="the attention fusion on a cohort of patients in the store")
    fusion.add_argument(
        "--cohort", required=True, help="CSV: PatientID, IssuerOfPatientID, response[, tumour_type] (split strata)"
    )
    fusion.add_argument("--out", default="fusion-model")
    fusion.add_argument("--expression-weights", help="default: pipelines.response.expression_weights")
    fusion.add_argument("--imaging-dim", type=int, default=32, help="size of the CytAct lesion embedding")
    fusion.add_argument("--mil-weights", help="the slide embeddings' MIL (default: pipelines.histology.mil_weights)")
    fusion.add_argument("--epochs", type=int, default=300)
    fusion.add_argument("--bootstrap", type=int, default=1000)
    fusion.add_argument("--seed", type=int, default=0)
    fusion.add_argument(
        "--retrain-expression",
        action="store_true",
        help="when the expression model was trained on fusion test patients, retrain it on the training split",
    )
    _card_arguments(fusion, "immunode-attention-fusion")
    fusion.set_defaults(handler=cmd_train_fusion)
    histology = models.add_parser("histology", help="the histology arm (patch encoder, MIL) on stored slides")
    histology.add_argument("--cohort", required=True, help="CSV: PatientID, IssuerOfPatientID, response")
    histology.add_argument("--out", default="histology-model")
    histology.add_argument("--encoder", help="existing encoder weights (default: train one self-supervised)")
    histology.add_argument("--base-width", type=int, default=64, help="ResNet-50 base width (64: ResNet-50)")
    histology.add_argument("--encoder-epochs", type=int, default=20)
    histology.add_argument("--ssl-patches", type=int, default=64, help="patches per slide for self-supervision")
    histology.add_argument("--mil-epochs", type=int, default=60)
    histology.add_argument("--mil-dim", type=int, default=512, help="MIL embedding size M (slide embedding)")
    histology.add_argument("--attention-dim", type=int, default=128, help="MIL attention size L")
    histology.add_argument("--seed", type=int, default=0)
    _card_arguments(histology, "immunode-histology")
    histology.set_defaults(handler=cmd_train_histology)
    reproduction = commands.add_parser(
        "reproduce", help="a method on a user's cohort, its figures beside the paper's headline numbers"
    )
    reproduction.add_argument("method", choices=("cytact", "radiomics", "amu", "fusion"))
    reproduction.add_argument(
        "--cohort",
        required=True,
        help="cytact: outcome table; radiomics: Δ table; amu: expression cohort; fusion: PatientID, response",
    )
    reproduction.add_argument("--out", default="reproduction")
    reproduction.add_argument("--published-table", help="radiomics: the paper's Table 2 as CSV")
    reproduction.add_argument("--published", nargs="*", default=[], help="fusion: NAME=VALUE, e.g. attention_auc=0.8")
    reproduction.add_argument("--panel", help="amu: gene panel TSV (the paper's 160 genes, when you have them)")
    reproduction.add_argument("--imaging-dim", type=int, default=32)
    reproduction.add_argument("--quick", action="store_true", help="small settings for a first look (stated)")
    reproduction.set_defaults(handler=cmd_reproduce)
    evaluate = commands.add_parser("evaluate", help="apply trained weights to a labelled cohort; report")
    evaluated = evaluate.add_subparsers(dest="model", required=True)
    cytact_eval = evaluated.add_parser("cytact", help="external validation: predicted vs RNA-derived lesion CytAct")
    cytact_eval.add_argument("--manifest", required=True, help="CSV as for train cytact, optional patient column")
    cytact_eval.add_argument("--weights", help="default: pipelines.pet_quant.cytact.weights (or the shipped ones)")
    cytact_eval.add_argument("--out", default="cytact-validation")
    cytact_eval.set_defaults(handler=cmd_evaluate_cytact)
    expression_eval = evaluated.add_parser("expression")
    expression_eval.add_argument("--cohort", required=True)
    expression_eval.add_argument("--weights", help="default: pipelines.response.expression_weights")
    expression_eval.add_argument("--out", default="expression-evaluation")
    expression_eval.set_defaults(handler=cmd_evaluate_expression)
    fusion_eval = evaluated.add_parser("fusion")
    fusion_eval.add_argument("--cohort", required=True)
    fusion_eval.add_argument("--weights", help="default: pipelines.response.fusion_weights")
    fusion_eval.add_argument("--expression-weights", help="default: pipelines.response.expression_weights")
    fusion_eval.add_argument("--out", default="fusion-evaluation")
    fusion_eval.set_defaults(handler=cmd_evaluate_fusion)
    imports = commands.add_parser("import", help="import expression or clinical data into the store")
    kinds = imports.add_subparsers(dest="kind", required=True)
    expression_import = kinds.add_parser("expression", help="an expression matrix (CSV/TSV) and a sample mapping")
    expression_import.add_argument("file")
    expression_import.add_argument("--mapping", required=True, help="CSV: sample_id, PatientID, IssuerOfPatientID")
    expression_import.add_argument("--units", required=True, choices=("tpm", "counts"))
    expression_import.add_argument("--orientation", choices=("genes-x-samples", "samples-x-genes"))
    expression_import.add_argument(
        "--delimiter", help="tab, comma, semicolon or a character (default from the extension)"
    )
    expression_import.set_defaults(handler=cmd_import_expression)
    clinical_import = kinds.add_parser("clinical", help="a clinical table (CSV/TSV), one row per patient")
    clinical_import.add_argument("file")
    clinical_import.add_argument(
        "--delimiter", help="tab, comma, semicolon or a character (default from the extension)"
    )
    clinical_import.set_defaults(handler=cmd_import_clinical)
    blood_import = kinds.add_parser(
        "blood", help="blood immune profile at T0/T1: PatientID, time_point, [date], declared marker columns"
    )
    blood_import.add_argument("file")
    blood_import.add_argument("--delimiter", help="tab, comma, semicolon or a character (default from the extension)")
    blood_import.set_defaults(handler=cmd_import_blood)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
