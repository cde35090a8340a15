"""Training: train ar-signature, cytact, expression, fusion, histology (weights with their model cards)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from immunode.cli.cohorts import delta_table, fusion_inputs, stored_series
from immunode.cli.common import card_arguments, index_session, print_problems, settings
from immunode.logging_setup import configure_logging

if TYPE_CHECKING:
    from models.expression_transformer import TransformerSettings


def cmd_train_ar_signature(args: argparse.Namespace) -> int:
    from models import ar_signature
    from models.errors import ModelError
    from pipelines.ct.delta import read_published_signature
    from pipelines.errors import SignatureFileError
    from research import radiomics as research
    from research.errors import DeltaTableError

    try:
        table = delta_table(args)
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
        return print_problems(error)
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

    config = settings(args)
    configure_logging(config.logging)
    training = TrainingSettings(epochs=args.epochs, copies_per_lesion=args.copies, folds=args.folds)
    try:
        card = train_from_manifest(
            Path(args.manifest),
            Path(args.out),
            config.pipelines.pet_quant,
            training,
            args.name,
            args.version,
            args.training_data,
            args.synthetic,
            stored_series(args, config),
        )
    except (ManifestError, OSError) as error:
        return print_problems(error)
    print(f"weights {Path(args.out) / card.weights_file} sha256 {card.sha256}")
    print(f"pooled out-of-fold Spearman rho {card.metrics['spearman_rho']} ({card.metrics['cross_validation']})")
    print("Set pipelines.pet_quant.cytact.weights to this file to use it.")
    return 0


def _transformer_settings(args: argparse.Namespace) -> TransformerSettings:
    from models.expression_transformer import TransformerSettings

    return TransformerSettings(
        epochs=args.epochs, layers=args.layers, heads=args.heads, head_dim=args.head_dim, seed=args.seed
    )


def cmd_train_expression(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from research.errors import CohortError
    from research.expression import train_expression

    configure_logging(settings(args).logging)
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
        return print_problems(error)
    auc = result.means["transformer"]["roc_auc"]
    print(f"report {result.report}; transformer mean ROC AUC {auc:.3f}")
    print(f"weights {result.weights} sha256 {result.card.sha256}")
    print("Set pipelines.response.expression_weights to this file to use it in the node's reports.")
    return 0


def cmd_train_fusion(args: argparse.Namespace) -> int:
    from models.errors import ModelError
    from models.fusion import FusionSettings
    from research.errors import CohortError
    from research.fusion import train_fusion_model

    config = settings(args)
    configure_logging(config.logging)
    expression_weights = args.expression_weights or config.pipelines.response.expression_weights
    try:
        cohort = fusion_inputs(args, Path(expression_weights) if expression_weights else None, args.imaging_dim)
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
        return print_problems(error)
    for kind, values in result.test_metrics.items():
        low, high = result.intervals[kind]["roc_auc"]
        print(f"{kind}: test ROC AUC {values['roc_auc']:.3f} (95 % CI {low:.3f}-{high:.3f})")
    print(f"report {result.report}; weights {result.weights} sha256 {result.card.sha256}")
    print("Set pipelines.response.fusion_weights to this file to use it in the node's reports.")
    return 0


def cmd_train_histology(args: argparse.Namespace) -> int:
    """The histology arm on the cohort's stored slides: encoder (self-supervised) and gated-attention MIL."""
    from models.errors import ModelError
    from models.histology import EncoderSettings, MilSettings
    from pipelines.errors import PipelineError
    from research.errors import CohortError
    from research.histology import LabelledSlide, train_histology
    from research.fusion import label_of, read_fusion_cohort
    from storage import patients, studies
    from storage.files import FileLayout

    config = settings(args)
    configure_logging(config.logging)
    histology = config.pipelines.histology
    try:
        cohort = read_fusion_cohort(Path(args.cohort))
        with index_session(args) as session:
            slides = {
                (s.patient_id, s.issuer_of_patient_id): s
                for s in studies.latest_series_by_patient(session, FileLayout(config.storage.root), "SM")
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
        return print_problems(error)
    auc = "n/a" if result.test_auc is None else f"{result.test_auc:.3f}"
    print(f"{len(labelled)} patients with slides; MIL held-out ROC AUC {auc}")
    print(f"encoder: {result.encoder_weights} ({result.encoder.training_data})")
    print(f"MIL: {result.mil_weights}; report: {result.report}")
    print("configure pipelines.histology.encoder_weights and mil_weights to analyse slides with them")
    return 0




def register(commands: argparse._SubParsersAction) -> None:
    from models import EXPRESSION_BASELINES as BASELINES

    train = commands.add_parser("train", help="train a model")
    models = train.add_subparsers(dest="model", required=True)
    signature = models.add_parser("ar-signature", help="oligo vs systemic classifier from Δ radiomic features")
    signature.add_argument("--table", help="CSV as for analyse-radiomics (default: the node's paired follow-ups)")
    signature.add_argument("--labels", help="CSV: PatientID, IssuerOfPatientID, pattern")
    signature.add_argument("--published", help="use the features of the published signature table")
    signature.add_argument("--features", help="comma-separated Δ feature names")
    signature.add_argument("--out", default="ar-signature")
    card_arguments(signature)
    signature.set_defaults(handler=cmd_train_ar_signature)
    cytact = models.add_parser("cytact", help="the CytAct network from a manifest of PET lesions and targets")
    cytact.add_argument("--manifest", required=True, help="CSV: pet, seed_x/seed_y/seed_z or mask, cytact")
    cytact.add_argument("--out", default="cytact-weights", help="folder for the weights and their card")
    card_arguments(cytact, "immunode-cytact-cnn")
    cytact.add_argument("--epochs", type=int, default=12)
    cytact.add_argument("--copies", type=int, default=15, help="rotated copies of each lesion per iteration")
    cytact.add_argument("--folds", type=int, default=10)
    cytact.set_defaults(handler=cmd_train_cytact)
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
    card_arguments(expression, "immunode-expression-transformer")
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
    card_arguments(fusion, "immunode-attention-fusion")
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
    card_arguments(histology, "immunode-histology")
    histology.set_defaults(handler=cmd_train_histology)
