"""Reproduction: reproduce cytact, radiomics, amu, fusion (a method on a user's cohort beside the paper's figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from immunode.cli.cohorts import cytact_selection, fusion_inputs
from immunode.cli.common import print_problems, settings
from immunode.config import Settings
from immunode.logging_setup import configure_logging

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

    config = settings(args)
    configure_logging(config.logging)
    out = Path(args.out)
    try:
        figures = _reproduce(args, config, out)
        notes = REPRODUCTION_NOTES[args.method] + (
            ["QUICK settings (--quick): fewer splits, epochs and grid points."] if args.quick else []
        )
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
        selection = cytact_selection(args, rows, 60)
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

        path = args.published_table or config.pipelines.ct_radiomics.published_signature
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

    published = reproduce.parse_published(args.published)  # a mistyped figure is an error before hours of work
    weights = config.pipelines.response.expression_weights
    cohort = fusion_inputs(args, Path(weights) if weights else None, args.imaging_dim)
    fusion = FusionSettings(epochs=60) if args.quick else FusionSettings()
    result = train_fusion_model(cohort, out, fusion, 200 if args.quick else 1000, retrain_expression=True)
    return reproduce.fusion_figures(result.test_metrics, published)


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
    reproduction.add_argument("--published-table", help="radiomics: the paper's Table 2 as CSV")
    reproduction.add_argument("--published", nargs="*", default=[], help="fusion: NAME=VALUE, e.g. attention_auc=0.8")
    reproduction.add_argument("--panel", help="amu: gene panel TSV (the paper's 160 genes, when you have them)")
    reproduction.add_argument("--imaging-dim", type=int, default=32)
    reproduction.add_argument("--quick", action="store_true", help="small settings for a first look (stated)")
    reproduction.set_defaults(handler=cmd_reproduce)
