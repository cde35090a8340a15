"""Reproduction: reproduce cytact, radiomics, amu, fusion (a method on a user's cohort beside the paper's figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from immunode.cli.cohorts import cytact_inputs, fusion_inputs
from immunode.cli.common import print_problems, settings
from immunode.config import Settings
from immunode.logging_setup import configure_logging


def cmd_reproduce(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research import reproduce
    from research.errors import ResearchError

    config = settings(args)
    configure_logging(config.logging)
    out = Path(args.out)
    try:
        figures = _reproduce(args, config, out)
        notes = reproduce.notes(args.method, args.quick, _window_days(args, config))
        report = reproduce.write_comparison(args.method, figures, notes, out)
    except (ResearchError, ModelError, OSError, ValueError) as error:
        return print_problems(error)
    print(f"comparison: {report}")
    return 0


def _reproduce(args: argparse.Namespace, config: Settings, out: Path) -> list:
    from research import reproduce

    if args.method == "cytact":
        from research import outcomes

        rows = outcomes.read_outcomes(Path(args.cohort))
        analyses, starts = cytact_inputs(args, rows)
        return reproduce.run_cytact(rows, analyses, starts, _window_days(args, config), out)
    if args.method == "radiomics":
        table = args.published_table or config.pipelines.ct_radiomics.published_signature
        return reproduce.run_radiomics(Path(args.cohort), out, args.quick, Path(table) if table else None)
    if args.method == "amu":
        panel = Path(args.panel) if args.panel else None
        test_cohort = Path(args.test_cohort) if args.test_cohort else None
        return reproduce.run_amu(Path(args.cohort), out, panel, args.quick, test_cohort)
    from models.fusion import FusionSettings
    from research.fusion import train_fusion_model

    published = reproduce.parse_published(args.published)  # a mistyped figure is an error before hours of work
    weights = config.pipelines.response.expression_weights
    cohort = fusion_inputs(args, Path(weights) if weights else None, args.imaging_dim)
    fusion = FusionSettings(epochs=60) if args.quick else FusionSettings()
    result = train_fusion_model(cohort, out, fusion, 200 if args.quick else 1000, retrain_expression=True)
    return reproduce.fusion_figures(result.test_metrics, published)


def _window_days(args: argparse.Namespace, config: Settings) -> int:
    """The pre-treatment window: --window-days, else the configured one (the method's 3 months by default)."""
    return args.window_days or config.pipelines.pet_quant.cytact.pretreatment_window_days


def register(commands: argparse._SubParsersAction) -> None:
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
    reproduction.add_argument(
        "--published-table", help="radiomics: the paper's Table 2 as CSV (optional: the figures table holds it)"
    )
    reproduction.add_argument("--published", nargs="*", default=[], help="fusion: NAME=VALUE, e.g. attention_auc=0.8")
    reproduction.add_argument("--panel", help="amu: gene panel TSV (the paper's gene list, when you have it)")
    reproduction.add_argument("--test-cohort", help="amu: a separate test cohort (the paper's test setting)")
    reproduction.add_argument(
        "--window-days", type=int, help="cytact: pre-treatment window (default: configured, the method's 3 months)"
    )
    reproduction.add_argument("--imaging-dim", type=int, default=32)
    reproduction.add_argument("--quick", action="store_true", help="small settings for a first look (stated)")
    reproduction.set_defaults(handler=cmd_reproduce)
