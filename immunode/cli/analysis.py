"""Research statistics: cytact-from-expression, analyse-outcomes, analyse-radiomics (research use)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from immunode.cli.cohorts import cytact_selection, delta_table
from immunode.cli.common import print_problems, settings


def cmd_cytact_from_expression(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from models.expression_scores import cytact_scores, read_expression

    try:
        table = read_expression(Path(args.file))
        scores = cytact_scores(table)
    except ModelError as error:
        return print_problems(error)
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

    config = settings(args)
    try:
        rows = outcomes.read_outcomes(Path(args.outcomes))
        changes = outcomes.read_lesion_changes(Path(args.lesion_changes)) if args.lesion_changes else []
    except (OSError, OutcomeTableError) as error:
        return print_problems(error)
    selection = cytact_selection(args, rows, None if args.any_date else args.window_days, args.model)
    table, unmatched = outcomes.joined_table(rows, selection)
    if len(table) < 3:
        reasons = "; ".join(selection.left_out) or "no CytAct results in the node"
        return print_problems(ValueError(f"only {len(table)} patient(s) of the outcome table usable ({reasons})"))
    cytact = config.pipelines.pet_quant.cytact
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


def cmd_analyse_radiomics(args: argparse.Namespace) -> int:
    from research import radiomics as research
    from research.errors import DeltaTableError

    try:
        table = delta_table(args)
        kept, results = research.analyse(table, Path(args.out), args.permutations, args.seed, args.alpha)
    except (OSError, DeltaTableError) as error:
        return print_problems(error)
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


def register(commands: argparse._SubParsersAction) -> None:
    expression = commands.add_parser(
        "cytact-from-expression", help="CytAct (GZMA, PRF1) and 6-gene IFN-gamma scores from an RNA-seq table"
    )
    expression.add_argument("file")
    expression.add_argument("--out", help="write the CSV here instead of standard output")
    expression.set_defaults(handler=cmd_cytact_from_expression)
    outcomes = commands.add_parser(
        "analyse-outcomes", help="join lesion CytAct with an outcome table; statistics and plots (research use)"
    )
    outcomes.add_argument(
        "--outcomes", required=True, help="CSV: PatientID, best_response, pfs/os months and events[, therapy_start]"
    )
    outcomes.add_argument("--window-days", type=int, default=60, help="the PET within this many days before therapy")
    outcomes.add_argument("--any-date", action="store_true", help="the latest PET whatever its date (not the method)")
    outcomes.add_argument("--model", help="CytAct model key (default: the most frequent among the patients' PETs)")
    outcomes.add_argument("--cutoff", type=float, help="low/high minimum CytAct (default: configured or Youden)")
    outcomes.add_argument("--variance-cutoff", type=float, help="heterogeneity cut-off (default: the cohort median)")
    outcomes.add_argument("--lesion-changes", help="CSV: PatientID, lesion, size_change_percent")
    outcomes.add_argument("--out", default="outcome-report", help="folder for report.md, plots and patients.csv")
    outcomes.set_defaults(handler=cmd_analyse_outcomes)
    radiomics = commands.add_parser(
        "analyse-radiomics",
        help="Δ-radiomics statistics between oligo and systemic progression (research use)",
    )
    radiomics.add_argument(
        "--table",
        help="CSV: PatientID, IssuerOfPatientID, pattern, Δ features (default: the node's patients with acquired "
        "resistance)",
    )
    radiomics.add_argument("--labels", help="CSV: PatientID, IssuerOfPatientID, pattern (overrides)")
    radiomics.add_argument("--out", default="radiomics-analysis")
    radiomics.add_argument("--permutations", type=int, default=1000)
    radiomics.add_argument("--seed", type=int, default=0)
    radiomics.add_argument("--alpha", type=float, default=0.05, help="significance level of both tests")
    radiomics.add_argument("--top", type=int, default=20, help="features printed")
    radiomics.set_defaults(handler=cmd_analyse_radiomics)
