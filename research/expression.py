"""Research commands of the expression transformer: `train expression` and `evaluate expression`.

Expression cohort file: CSV/TSV, one row per sample (samples × genes), the first column the sample ID, a
`response` column (1/0, or RECIST CR/PR → 1 and SD/PD → 0), optional `PatientID` and `IssuerOfPatientID` columns
(the model's card then names the patients it was trained on, for the fusion's leakage guard), the other columns
genes (TPM or raw counts).

Reports: metrics.csv (per split), report.md, roc.png and pr.png, gene_importance.csv (mean |SHAP|) and
gene_embedding_similarity.csv.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from models import expression_baselines
from models.cards import ModelCard, save_weights
from models.expression_transformer import (
    DEFAULT_PANEL,
    GenePanel,
    TransformerSettings,
    gene_embedding_similarity,
    gene_importance,
    load_panel,
    panel_features,
    parameter_count,
    predict_proba,
    train_transformer,
)
from models.metrics import METRIC_NAMES, classification_metrics, mean_metrics
from models.serving import load_expression
from research import published
from research.cohort_files import format_metric, plot_curves, response_label, table_rows, write_metrics
from research.errors import CohortError

logger = logging.getLogger(__name__)

TRANSFORMER = "transformer"
PATIENT_COLUMNS = ("PatientID", "IssuerOfPatientID")


@dataclass(frozen=True, eq=False)
class ExpressionCohort:
    sample_ids: tuple[str, ...]
    profiles: tuple[dict[str, float], ...]
    labels: np.ndarray
    patients: tuple[tuple[str, str] | None, ...] = ()  # each sample's (PatientID, issuer) when the file names it


def read_expression_cohort(path: Path) -> ExpressionCohort:
    rows = table_rows(path)
    if len(rows) < 2:
        raise CohortError(f"{path}: needs a header and samples")
    header = [cell.strip() for cell in rows[0]]
    if "response" not in header:
        raise CohortError(f"{path}: row 1: no 'response' column")
    response = header.index("response")
    identity = {name: header.index(name) for name in PATIENT_COLUMNS if name in header}
    genes = [(i, cell.upper()) for i, cell in enumerate(header) if i not in (0, response, *identity.values())]
    samples, profiles, labels, patients = [], [], [], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CohortError(f"{path}: row {number} has {len(row)} fields, the header has {len(header)}")
        values = {}
        for index, gene in genes:
            try:
                values[gene] = float(row[index])
            except ValueError:
                raise CohortError(f"{path}: row {number}, column {header[index]!r}: not a number") from None
        samples.append(row[0].strip())
        profiles.append(values)
        labels.append(response_label(row[response], number))
        patient_id = row[identity["PatientID"]].strip() if "PatientID" in identity else ""
        issuer = row[identity["IssuerOfPatientID"]].strip() if "IssuerOfPatientID" in identity else ""
        patients.append((patient_id, issuer) if patient_id else None)
    labels_array = np.array(labels)
    if len(np.unique(labels_array)) < 2:
        raise CohortError(f"{path}: the cohort needs responders and non-responders")
    return ExpressionCohort(tuple(samples), tuple(profiles), labels_array, tuple(patients))


@dataclass(frozen=True)
class ExpressionTrainingResult:
    card: ModelCard
    weights: Path
    means: dict[str, dict[str, float]]  # model → mean metric over splits
    report: Path


def train_expression(
    cohort_path: Path,
    out: Path,
    panel_path: Path | None = None,
    settings: TransformerSettings = TransformerSettings(),
    splits: int = 5,
    baselines: Sequence[str] = expression_baselines.BASELINES,
    name: str = "immunode-expression-transformer",
    version: str = "1.0.0",
    training_data: str = "",
    synthetic: bool = False,
    grid: str = "published",
    shap_samples: int = 0,
    cnn_epochs: int = expression_baselines.CNN_EPOCHS,
) -> ExpressionTrainingResult:
    """Random stratified 80/20 splits: the transformer and the baselines on the same splits, then the final
    model on the whole cohort, saved with its card. Gene importance (SHAP) is explained over every sample, or a
    seeded random `shap_samples` of them (expected gradients cost ~0.25 s per sample on a CPU)."""
    out.mkdir(parents=True, exist_ok=True)
    cohort = read_expression_cohort(cohort_path)
    panel = load_panel(panel_path)
    features = panel_features(cohort.profiles, panel)
    labels = cohort.labels
    splitter = StratifiedShuffleSplit(n_splits=splits, test_size=0.2, random_state=settings.seed)
    rows: list[dict] = []
    pooled: dict[str, tuple[list, list]] = {m: ([], []) for m in (TRANSFORMER, *baselines)}
    for split, (train, test) in enumerate(splitter.split(features, labels)):
        model = train_transformer(features[train], labels[train], settings)
        predictions = {TRANSFORMER: predict_proba(model, features[test])}
        for baseline in baselines:  # each oversamples inside its own fit (grid searches: per inner fold)
            predictions[baseline] = expression_baselines.fit_predict(
                baseline,
                features[train],
                labels[train],
                features[test],
                seed=settings.seed + split,
                grid=grid,
                cnn_epochs=cnn_epochs,
            )
        for model_name, scores in predictions.items():
            rows.append({"model": model_name, "split": split + 1, **classification_metrics(labels[test], scores)})
            pooled[model_name][0].extend(labels[test])
            pooled[model_name][1].extend(scores)
        logger.info("split %d: transformer AUC %.3f", split + 1, rows[-len(predictions)]["roc_auc"])
    means = {m: mean_metrics([r for r in rows if r["model"] == m]) for m in pooled}
    rows += [{"model": m, "split": "mean", **values} for m, values in means.items()]
    write_metrics(out / "metrics.csv", rows)
    plot_curves({m: (np.array(y), np.array(s)) for m, (y, s) in pooled.items()}, out, "held-out samples, all splits")
    final = train_transformer(features, labels, settings)
    background = features[np.random.default_rng(settings.seed).choice(len(features), min(50, len(features)), False)]
    rng = np.random.default_rng(settings.seed + 1)
    explained = (
        features if not 0 < shap_samples < len(features) else features[rng.choice(len(features), shap_samples, False)]
    )
    importance = gene_importance(final, background, explained)
    order = np.argsort(-importance)
    with (out / "gene_importance.csv").open("w") as handle:
        handle.write("gene,mean_abs_shap\n" + "".join(f"{panel.genes[i]},{importance[i]:.6g}\n" for i in order))
    similarity = gene_embedding_similarity(final)
    with (out / "gene_embedding_similarity.csv").open("w") as handle:
        handle.write("gene," + ",".join(panel.genes) + "\n")
        for gene, row in zip(panel.genes, similarity):
            handle.write(gene + "," + ",".join(f"{v:.4f}" for v in row) + "\n")
    card = save_weights(
        final.state_dict(),
        out / "expression-transformer.pt",
        ModelCard(
            name,
            version,
            synthetic,
            training_data=training_data or f"{cohort_path.name}: {len(labels)} samples, {int(labels.sum())} responders",
            intended_use="Research use only: ICI response probability from tumour mRNA expression.",
            metrics={"mean_over_splits": means[TRANSFORMER], "splits": splits, "parameters": parameter_count(final)},
            parameters={
                "transformer": asdict(settings),
                "panel": panel.name,
                "panel_sha256": panel.sha256,
                "genes": list(panel.genes),
                # The samples (and, when the cohort names them, the patients) the final model was trained on: the
                # fusion refuses to test on those patients (leakage).
                "training_samples": list(cohort.sample_ids),
                "training_patients": [list(p) for p in sorted({p for p in cohort.patients if p})],
            },
        ),
    )
    report = out / "report.md"
    lines = [
        "# Expression transformer: training report (research use only)",
        "",
        f"Cohort {cohort_path.name}: {len(labels)} samples, {int(labels.sum())} responders; panel {panel.name} "
        f"({len(panel.genes)} genes); {splits} random stratified 80/20 splits; responders duplicated 1:1 in training.",
        "",
        "| model | " + " | ".join(METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    for model_name, values in means.items():
        lines.append(f"| {model_name} | " + " | ".join(format_metric(values[n]) for n in METRIC_NAMES) + " |")
    genes, paper_parameters = published.figure("yin2025", "panel_genes"), published.figure("yin2025", "parameters")
    published_panel = f" (the paper's {genes.shown}-gene list is in its supplement, not here: --panel takes it)"
    lines += [
        "",
        "Means over splits. precision, recall and f1 over both classes: *_macro the unweighted mean of the two classes "
        "(as the paper's comparison table averages them), *_weighted weighted by class size (weighted recall equals "
        "accuracy); map is the mean of both classes' average precision; *_responder are the responder class's own "
        "figures; sensitivity and specificity at probability 0.5.",
        f"Baselines: random forest and AdaBoost grid-searched over {expression_baselines.GRIDS[grid]} ({grid} grid), "
        f"SVM over kernel, C and gamma, XGBoost, a CNN of three Conv1D layers ({cnn_epochs} epochs); all on the same "
        "splits and features.",
        f"Transformer: {settings.heads} heads ({settings.head_dim or settings.embed_dim}-D each) on "
        f"{settings.embed_dim}-D gene embeddings, {settings.layers} layers: {parameter_count(final):,} parameters "
        f"for {len(panel.genes)} genes; the paper's model: {paper_parameters.shown} for its {genes.shown}-gene panel "
        f"({paper_parameters.reference}).",
        f"Panel {panel.name}" + ("" if panel.name != DEFAULT_PANEL.name else published_panel) + ".",
        *expression_comparison(),
        "ROC and precision-recall curves of the pooled held-out predictions: roc.png, pr.png.",
        f"Top genes by mean |SHAP| (final model, over {len(explained)} samples): "
        f"{', '.join(panel.genes[i] for i in order[:10])}.",
        f"Weights: {card.weights_file}, sha256 {card.sha256}" + (" (SYNTHETIC training data)." if synthetic else "."),
    ]
    report.write_text("\n".join(lines) + "\n")
    return ExpressionTrainingResult(card, out / card.weights_file, means, report)


def evaluate_expression(cohort_path: Path, weights: Path, out: Path) -> dict[str, float]:
    """Apply trained weights to a labelled cohort: metrics, ROC and PR plots."""
    out.mkdir(parents=True, exist_ok=True)
    model, genes, card = load_expression(weights)
    cohort = read_expression_cohort(cohort_path)
    scores = predict_proba(model, panel_features(cohort.profiles, GenePanel(genes, "", "")))
    values = classification_metrics(cohort.labels, scores)
    write_metrics(out / "metrics.csv", [{"model": card.name, **values}])
    plot_curves({card.name: (cohort.labels, scores)}, out, f"{card.name} on {cohort_path.name}")
    with (out / "predictions.csv").open("w") as handle:
        handle.write("sample,response,probability\n")
        handle.writelines(f"{s},{y},{p:.6f}\n" for s, y, p in zip(cohort.sample_ids, cohort.labels, scores))
    (out / "report.md").write_text(
        f"# {card.name} {card.version} on {cohort_path.name} (research use only)\n\n"
        + "\n".join(f"- {n}: {format_metric(values[n])}" for n in METRIC_NAMES)
        + f"\n\nWeights sha256 {card.sha256}{' (SYNTHETIC training data)' if card.synthetic_training_data else ''}.\n"
    )
    return values


def expression_comparison() -> list[str]:
    """The paper's figures beside which these means stand, like for like (from the published-figures table)."""
    val = [published.figure("yin2025", k) for k in ("val_auc", "val_map", "val_f1")]
    test = [published.figure("yin2025", k) for k in ("test_auc", "test_map")]
    return [
        "Like for like: these are means over held-out random splits of one cohort, the setting of the paper's "
        "validation split (" + ", ".join(f"{f.metric} {f.shown}" for f in val) + f"; {val[0].split}). "
        "The paper's test figures (" + ", ".join(f"{f.metric} {f.shown}" for f in test) + f"; {test[0].split}, "
        "samples apart from the training pool) compare with `immunode evaluate expression` of these weights on a "
        "separate cohort, not with these means. Responders are duplicated inside each training split only, here "
        "and in every baseline (the grid searches: inside each inner training fold).",
    ]
