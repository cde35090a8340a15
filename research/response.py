"""Research commands of the response models: `train/evaluate expression` and `train/evaluate fusion`.

Expression cohort file: CSV/TSV, one row per sample (samples × genes), the first column the sample ID, a
`response` column (1/0, or RECIST CR/PR → 1 and SD/PD → 0), the other columns genes (TPM or raw counts).
Fusion cohort file: CSV/TSV with PatientID, optional IssuerOfPatientID and `response` (blank: the imported
best response); the modalities come from the node's store (lesion embeddings, expression, clinical data).

Reports: metrics.csv (per split or with bootstrap intervals), report.md, roc.png and pr.png; the expression
training also writes gene_importance.csv (mean |SHAP|) and gene_embedding_similarity.csv.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit, train_test_split

from common.types import PatientData
from models import expression_baselines
from models.cards import ModelCard, save_weights
from models.expression_transformer import (
    GenePanel,
    TransformerSettings,
    balance_by_duplication,
    gene_embedding_similarity,
    gene_importance,
    load_panel,
    panel_features,
    predict_proba,
    train_transformer,
)
from models.fusion import MODALITIES, FusionData, FusionSettings, predict, train_fusion
from models.metrics import METRIC_NAMES, bootstrap_interval, classification_metrics, mean_metrics
from models.serving import load_expression, load_fusion
from pipelines.omics.response import fusion_data
from research.errors import CohortError

logger = logging.getLogger(__name__)

RESPONSE_LABELS = {"1": 1, "0": 0, "CR": 1, "PR": 1, "SD": 0, "PD": 0, "R": 1, "NR": 0}
TRANSFORMER = "transformer"


@dataclass(frozen=True, eq=False)
class ExpressionCohort:
    sample_ids: tuple[str, ...]
    profiles: tuple[dict[str, float], ...]
    labels: np.ndarray


def _rows(path: Path) -> list[list[str]]:
    text = Path(path).read_text(encoding="utf-8-sig")
    delimiter = "\t" if Path(path).suffix.lower() in (".tsv", ".tab", ".txt") else ","
    return [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row]


def _label(text: str, row: int) -> int:
    label = RESPONSE_LABELS.get(text.strip().upper())
    if label is None:
        raise CohortError(f"row {row}, column 'response': {text!r} is not 1/0 or CR/PR/SD/PD")
    return label


def read_expression_cohort(path: Path) -> ExpressionCohort:
    rows = _rows(path)
    if len(rows) < 2:
        raise CohortError(f"{path}: needs a header and samples")
    header = [cell.strip() for cell in rows[0]]
    if "response" not in header:
        raise CohortError(f"{path}: row 1: no 'response' column")
    response = header.index("response")
    genes = [(i, cell.upper()) for i, cell in enumerate(header) if i not in (0, response)]
    samples, profiles, labels = [], [], []
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
        labels.append(_label(row[response], number))
    labels_array = np.array(labels)
    if len(np.unique(labels_array)) < 2:
        raise CohortError(f"{path}: the cohort needs responders and non-responders")
    return ExpressionCohort(tuple(samples), tuple(profiles), labels_array)


def _plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    for kind in ("roc", "pr"):
        figure, axis = plt.subplots(figsize=(5, 5))
        for name, (labels, scores) in curves.items():
            if len(np.unique(labels)) < 2:
                continue
            if kind == "roc":
                x, y, _ = roc_curve(labels, scores)
                axis.plot(x, y, label=f"{name} (AUC {auc(x, y):.2f})")
            else:
                precision, recall, _ = precision_recall_curve(labels, scores)
                axis.plot(recall, precision, label=name)
        if kind == "roc":
            axis.plot([0, 1], [0, 1], ":", color="grey")
            axis.set(xlabel="1 - specificity", ylabel="sensitivity")
        else:
            axis.set(xlabel="recall", ylabel="precision")
        axis.set_title(f"{title} ({'ROC' if kind == 'roc' else 'precision-recall'})")
        axis.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
        figure.tight_layout()
        figure.savefig(out / f"{kind}.png", dpi=100)
        plt.close(figure)


def _write_metrics(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


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
) -> ExpressionTrainingResult:
    """Random stratified 80/20 splits: the transformer and the baselines on the same splits, then the final
    model on the whole cohort, saved with its card."""
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
        rng = np.random.default_rng(settings.seed + split)
        balanced_x, balanced_y = balance_by_duplication(features[train], labels[train], rng)
        for baseline in baselines:
            predictions[baseline] = expression_baselines.fit_predict(
                baseline, balanced_x, balanced_y, features[test], seed=settings.seed + split
            )
        for model_name, scores in predictions.items():
            rows.append({"model": model_name, "split": split + 1, **classification_metrics(labels[test], scores)})
            pooled[model_name][0].extend(labels[test])
            pooled[model_name][1].extend(scores)
        logger.info("split %d: transformer AUC %.3f", split + 1, rows[-len(predictions)]["roc_auc"])
    means = {m: mean_metrics([r for r in rows if r["model"] == m]) for m in pooled}
    rows += [{"model": m, "split": "mean", **values} for m, values in means.items()]
    _write_metrics(out / "metrics.csv", rows)
    _plot_curves({m: (np.array(y), np.array(s)) for m, (y, s) in pooled.items()}, out, "held-out samples, all splits")
    final = train_transformer(features, labels, settings)
    background = features[np.random.default_rng(settings.seed).choice(len(features), min(50, len(features)), False)]
    importance = gene_importance(final, background, features)
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
            metrics={"mean_over_splits": means[TRANSFORMER], "splits": splits},
            parameters={
                "transformer": asdict(settings),
                "panel": panel.name,
                "panel_sha256": panel.sha256,
                "genes": list(panel.genes),
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
        lines.append(f"| {model_name} | " + " | ".join(_fmt(values[n]) for n in METRIC_NAMES) + " |")
    lines += [
        "",
        "Means over splits (average_precision's mean is the mean average precision); per split in metrics.csv.",
        "ROC and precision-recall curves of the pooled held-out predictions: roc.png, pr.png.",
        f"Top genes by mean |SHAP| (final model): {', '.join(panel.genes[i] for i in order[:10])}.",
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
    _write_metrics(out / "metrics.csv", [{"model": card.name, **values}])
    _plot_curves({card.name: (cohort.labels, scores)}, out, f"{card.name} on {cohort_path.name}")
    with (out / "predictions.csv").open("w") as handle:
        handle.write("sample,response,probability\n")
        handle.writelines(f"{s},{y},{p:.6f}\n" for s, y, p in zip(cohort.sample_ids, cohort.labels, scores))
    (out / "report.md").write_text(
        f"# {card.name} {card.version} on {cohort_path.name} (research use only)\n\n"
        + "\n".join(f"- {n}: {_fmt(values[n])}" for n in METRIC_NAMES)
        + f"\n\nWeights sha256 {card.sha256}{' (SYNTHETIC training data)' if card.synthetic_training_data else ''}.\n"
    )
    return values


# --- fusion --------------------------------------------------------------------------------------------------


def read_fusion_cohort(path: Path) -> list[tuple[str, str, str]]:
    """(PatientID, IssuerOfPatientID, response text) rows."""
    rows = _rows(path)
    if not rows:
        raise CohortError(f"{path}: empty")
    header = [cell.strip() for cell in rows[0]]
    for column in ("PatientID", "response"):
        if column not in header:
            raise CohortError(f"{path}: row 1: no {column!r} column")
    cohort = []
    for number, row in enumerate(rows[1:], start=2):
        cells = dict(zip(header, (c.strip() for c in row)))
        if not cells.get("PatientID"):
            raise CohortError(f"{path}: row {number}, column 'PatientID': empty")
        cohort.append((cells["PatientID"], cells.get("IssuerOfPatientID", ""), cells.get("response", "")))
    return cohort


def fusion_cohort_data(
    cohort: Sequence[tuple[str, str, str]],
    patients: dict[tuple[str, str], PatientData],
    embeddings: dict[tuple[str, str], tuple[str, list[list[float]]]],
    expression_weights: Path | None,
    imaging_dim: int,
) -> tuple[FusionData, list[tuple[str, str]], str, str]:
    """Inputs and labels of the cohort's patients, the expression model's sha256 ('' when none) and the key of
    the CytAct model whose lesion embeddings are the imaging modality (patients analysed with another are
    left without imaging)."""
    expression = None
    expression_sha = ""
    if expression_weights is not None:
        model, genes, card = load_expression(expression_weights)
        expression, expression_sha = (model, genes), card.sha256
    imaging_models = [embeddings[k][0] for k in ((p, i) for p, i, _ in cohort) if k in embeddings]
    cytact_model = max(set(imaging_models), key=imaging_models.count) if imaging_models else ""
    keys, labels, entries = [], [], []
    for number, (patient_id, issuer, response) in enumerate(cohort, start=2):
        key = (patient_id, issuer)
        patient = patients.get(key)
        text = response or (patient.clinical.best_response if patient and patient.clinical else "")
        if not text:
            raise CohortError(f"row {number}: no response given and no best response imported for {patient_id}")
        if text.upper() == "NE":
            continue
        labels.append(_label(text, number))
        keys.append(key)
        model_key, lesions = embeddings.get(key, ("", None))
        entries.append((patient, lesions if model_key == cytact_model else None))
    data = fusion_data(entries, expression, imaging_dim, np.array(labels))
    return data, keys, expression_sha, cytact_model


@dataclass(frozen=True)
class FusionTrainingResult:
    card: ModelCard
    weights: Path
    test_metrics: dict[str, dict[str, float]]  # "attention" / "concat" → metrics
    intervals: dict[str, dict[str, tuple[float, float]]]
    report: Path


def _split_70_10_20(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.arange(len(labels))
    rest, test = train_test_split(rows, test_size=0.2, stratify=labels, random_state=seed)
    train, validation = train_test_split(rest, test_size=0.125, stratify=labels[rest], random_state=seed)
    return train, validation, test


def train_fusion_model(
    data: FusionData,
    keys: list[tuple[str, str]],
    out: Path,
    expression_sha256: str,
    cytact_model: str,
    settings: FusionSettings = FusionSettings(),
    bootstrap: int = 1000,
    name: str = "immunode-attention-fusion",
    version: str = "1.0.0",
    training_data: str = "",
    synthetic: bool = False,
) -> FusionTrainingResult:
    """Stratified 70/10/20 split; attention fusion and the concatenation ablation; bootstrap 95 % CIs on the
    test set; per-patient modality weights; the attention model saved with its card."""
    out.mkdir(parents=True, exist_ok=True)
    usable = data.present.any(axis=1)
    data, keys = data.rows(np.flatnonzero(usable)), [k for k, u in zip(keys, usable) if u]
    train, validation, test = _split_70_10_20(data.labels, settings.seed)
    models, test_metrics, intervals, curves = {}, {}, {}, {}
    for kind in ("attention", "concat"):
        model = train_fusion(data.rows(train), data.rows(validation), kind, settings)
        probability, _ = predict(model, data.rows(test))
        labels = data.labels[test]
        models[kind] = model
        test_metrics[kind] = classification_metrics(labels, probability)
        intervals[kind] = {
            metric: bootstrap_interval(
                labels,
                probability,
                lambda y, p, metric=metric: classification_metrics(y, p)[metric],
                resamples=bootstrap,
                seed=settings.seed,
            )
            for metric in METRIC_NAMES
        }
        curves[kind] = (labels, probability)
    _plot_curves(curves, out, "attention fusion vs concatenation, test set")
    rows = [
        {"model": kind, "metric": metric, "value": test_metrics[kind][metric], "ci_low": low, "ci_high": high}
        for kind in test_metrics
        for metric, (low, high) in intervals[kind].items()
    ]
    _write_metrics(out / "metrics.csv", rows)
    probability, weights = predict(models["attention"], data)
    split_of = {int(i): s for s, rows_ in (("train", train), ("validation", validation), ("test", test)) for i in rows_}
    with (out / "modality_weights.csv").open("w") as handle:
        handle.write("PatientID,IssuerOfPatientID,split,response,probability," + ",".join(MODALITIES) + "\n")
        for i, (patient_id, issuer) in enumerate(keys):
            cells = [f"{weights[i, j]:.4f}" if data.present[i, j] else "" for j in range(len(MODALITIES))]
            handle.write(
                f"{patient_id},{issuer},{split_of[i]},{data.labels[i]},{probability[i]:.4f}," + ",".join(cells) + "\n"
            )
    dims = {m: int(v.shape[1]) for m, v in data.inputs.items()}
    card = save_weights(
        models["attention"].state_dict(),
        out / "fusion.pt",
        ModelCard(
            name,
            version,
            synthetic,
            training_data=training_data or f"{len(keys)} patients from the node's store",
            intended_use="Research use only: ICI response probability from imaging, genomic and clinical data.",
            metrics={k: {"test": test_metrics[k], "ci95": intervals[k]} for k in test_metrics},
            parameters={
                "kind": "attention",
                "dims": dims,
                "settings": asdict(settings),
                "expression_weights_sha256": expression_sha256,
                "cytact_model": cytact_model,
            },
        ),
    )
    mean_weights = {
        m: float(np.nanmean(np.where(data.present[:, j], weights[:, j], np.nan))) for j, m in enumerate(MODALITIES)
    }
    report = out / "report.md"
    lines = [
        "# Attention fusion: training report (research use only)",
        "",
        f"{len(keys)} patients ({int(data.labels.sum())} responders); stratified split 70/10/20 "
        f"({len(train)}/{len(validation)}/{len(test)}); minority oversampled in training; 95 % bootstrap CIs "
        f"({bootstrap} resamples) on the test set.",
        "",
        "| model | " + " | ".join(METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    for kind in test_metrics:
        cells = [
            f"{_fmt(test_metrics[kind][m])} ({_fmt(intervals[kind][m][0])}-{_fmt(intervals[kind][m][1])})"
            for m in METRIC_NAMES
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean modality weight where present: " + ", ".join(f"{m} {w:.2f}" for m, w in mean_weights.items()) + ".",
        "Per-patient weights: modality_weights.csv. Modalities present: "
        + ", ".join(f"{m} {int(data.present[:, j].sum())}" for j, m in enumerate(MODALITIES))
        + ".",
        f"Weights: {card.weights_file}, sha256 {card.sha256}" + (" (SYNTHETIC training data)." if synthetic else "."),
    ]
    report.write_text("\n".join(lines) + "\n")
    return FusionTrainingResult(card, out / card.weights_file, test_metrics, intervals, report)


def evaluate_fusion_model(data: FusionData, keys: list[tuple[str, str]], weights: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model, card = load_fusion(weights)
    usable = data.present.any(axis=1)
    data, keys = data.rows(np.flatnonzero(usable)), [k for k, u in zip(keys, usable) if u]
    probability, _ = predict(model, data)
    values = classification_metrics(data.labels, probability)
    _write_metrics(out / "metrics.csv", [{"model": card.name, **values}])
    _plot_curves({card.name: (data.labels, probability)}, out, f"{card.name}")
    (out / "report.md").write_text(
        f"# {card.name} {card.version} on {len(keys)} patients (research use only)\n\n"
        + "\n".join(f"- {n}: {_fmt(values[n])}" for n in METRIC_NAMES)
        + "\n"
    )
    return values
