"""Evaluation: evaluate cytact, expression, fusion (trained weights applied to a labelled cohort; a report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from immunode.cli.cohorts import fusion_inputs, stored_series
from immunode.cli.common import print_problems, settings


def cmd_evaluate_cytact(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research.cytact_training import evaluate_cytact
    from research.errors import ManifestError

    config = settings(args)
    weights = Path(args.weights) if args.weights else config.pipelines.pet_quant.cytact.weights
    try:
        result = evaluate_cytact(
            Path(args.manifest), weights, config.pipelines.pet_quant, Path(args.out), stored_series(args, config)
        )
    except (ManifestError, ModelError, OSError) as error:
        return print_problems(error)
    line = f"lesions: Spearman rho {result.lesion_rho:.3f} (p {result.lesion_p:.3g}, n {result.lesions})"
    if result.patient_rho is not None:
        line += f"; patients: rho {result.patient_rho:.3f} (p {result.patient_p:.3g}, n {result.patients})"
    print(f"{line}; report {result.report}")
    return 0


def cmd_evaluate_expression(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research.errors import CohortError
    from research.expression import evaluate_expression

    weights = args.weights or settings(args).pipelines.response.expression_weights
    if weights is None:
        return print_problems(ValueError("give --weights or set pipelines.response.expression_weights"))
    try:
        values = evaluate_expression(Path(args.cohort), Path(weights), Path(args.out))
    except (CohortError, ModelError, OSError) as error:
        return print_problems(error)
    print(", ".join(f"{name} {value:.3f}" for name, value in values.items()) + f"; report in {args.out}")
    return 0


def cmd_evaluate_fusion(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from models.serving import load_fusion
    from research.errors import CohortError
    from research.fusion import evaluate_fusion_model

    config = settings(args)
    weights = args.weights or config.pipelines.response.fusion_weights
    if weights is None:
        return print_problems(ValueError("give --weights or set pipelines.response.fusion_weights"))
    expression_weights = args.expression_weights or config.pipelines.response.expression_weights
    try:
        _, card = load_fusion(Path(weights))
        cohort = fusion_inputs(
            args, Path(expression_weights) if expression_weights else None, card.parameters["dims"]["imaging"]
        )
        values = evaluate_fusion_model(cohort, Path(weights), Path(args.out))
    except (CohortError, ModelError, OSError, ValueError) as error:
        return print_problems(error)
    print(", ".join(f"{name} {value:.3f}" for name, value in values.items()) + f"; report in {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
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
