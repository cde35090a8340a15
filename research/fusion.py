"""Research commands of the attention fusion: `train fusion` and `evaluate fusion`.

Fusion cohort file: CSV/TSV with PatientID, optional IssuerOfPatientID and `response` (blank: the imported
best response), optional tumour_type; the modalities come from the node's store (lesion embeddings, expression,
clinical data, slide embeddings).

Reports: metrics.csv (with bootstrap intervals), report.md, roc.png and pr.png, modality_weights.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from common.types import PatientData
from models import FUSION_PUBLISHED_DIFFERENCES
from models.cards import ModelCard, save_weights, verify_card
from models.expression_transformer import (
    ExpressionTransformer,
    GenePanel,
    TransformerSettings,
    embed,
    panel_features,
    train_transformer,
)
from models.fusion import MODALITIES, FusionData, FusionSettings, predict, train_fusion
from models.metrics import METRIC_NAMES, bootstrap_intervals, classification_metrics
from models.serving import load_expression, load_fusion
from pipelines.omics.response import fusion_data
from research.cohort_files import format_metric, plot_curves, response_label, table_rows, write_metrics
from research.errors import CohortError


@dataclass(frozen=True)
class FusionRow:
    patient_id: str
    issuer: str
    response: str
    tumour_type: str = ""


def read_fusion_cohort(path: Path) -> list[FusionRow]:
    """PatientID, optional IssuerOfPatientID, response (or the imported best response), optional tumour_type."""
    rows = table_rows(path)
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
        cohort.append(
            FusionRow(
                cells["PatientID"],
                cells.get("IssuerOfPatientID", ""),
                cells.get("response", ""),
                cells.get("tumour_type", ""),
            )
        )
    return cohort


@dataclass(frozen=True, eq=False)
class FusionCohort:
    """The fusion's inputs for a cohort, and what they came from: the expression model (to check leakage and,
    when asked, to retrain on the training split) and the CytAct model of the imaging embeddings."""

    data: FusionData
    keys: list[tuple[str, str]]
    tumour_types: list[str]
    expression_samples: list[str]  # each row's imported expression sample ("" when none)
    expression_sha256: str
    expression_training_samples: frozenset[str]
    cytact_model: str
    imaging_dim: int
    expression: tuple[ExpressionTransformer, tuple[str, ...], ModelCard] | None = None
    profiles: list[dict[str, float] | None] = field(default_factory=list)
    histology_model: str = ""  # the MIL model of the slide embeddings ("" when no patient has a slide)
    mil_patients: frozenset[tuple[str, str]] = frozenset()  # the MIL's training patients (from its card)
    # The leakage guard is by patient: every sample ID imported for each row's patient, the expression model's
    # training patients (its card, when its cohort named them), and the training samples of no imported patient.
    patient_samples: list[tuple[str, ...]] = field(default_factory=list)
    expression_training_patients: frozenset[tuple[str, str]] = frozenset()
    unmapped_training_samples: int = 0


def label_of(row: FusionRow, patient: PatientData | None, number: int) -> int | None:
    """The row's response label (its own, else the imported best response); None for NE (not evaluable)."""
    text = row.response or (patient.clinical.best_response if patient and patient.clinical else "")
    if not text:
        raise CohortError(f"row {number}: no response given and no best response imported for {row.patient_id}")
    if text.upper() == "NE":
        return None
    return response_label(text, number)


def fusion_cohort_data(
    cohort: Sequence[FusionRow],
    patients: dict[tuple[str, str], PatientData],
    embeddings: dict[tuple[str, str], tuple[str, list[list[float]]]],
    expression_weights: Path | None,
    imaging_dim: int,
    mil_weights: Path | None = None,
) -> FusionCohort:
    """Inputs and labels of the cohort's patients; the imaging modality is the lesion embeddings of the most
    frequent CytAct model (patients analysed with another are left without imaging), the histology modality the
    slide embeddings of the most frequent MIL model, whose card (`mil_weights`) names its training patients."""
    expression = load_expression(expression_weights) if expression_weights is not None else None
    imaging_models = [embeddings[(r.patient_id, r.issuer)][0] for r in cohort if (r.patient_id, r.issuer) in embeddings]
    cytact_model = max(set(imaging_models), key=imaging_models.count) if imaging_models else ""
    slides = [p.slide for r in cohort if (p := patients.get((r.patient_id, r.issuer))) is not None and p.slide]
    mil_models = [slide.mil_model for slide in slides]
    histology_model = max(set(mil_models), key=mil_models.count) if mil_models else ""
    histology_dim = next((len(x.embedding) for x in slides if x.mil_model == histology_model), 1)
    mil_patients: frozenset[tuple[str, str]] = frozenset()
    if histology_model:
        card = verify_card(mil_weights) if mil_weights is not None else None
        identity = f"{card.name} {card.version} sha256:{card.sha256[:16]}" if card else ""
        if identity != histology_model:
            raise CohortError(
                f"the slide embeddings come from {histology_model}: its weights are needed to check that the fusion "
                "is not tested on the MIL's training patients (--mil-weights or pipelines.histology.mil_weights)"
            )
        mil_patients = frozenset(tuple(p) for p in card.parameters.get("training_patients", ()))
    keys, labels, entries, types, samples, profiles, patient_samples = [], [], [], [], [], [], []
    for number, row in enumerate(cohort, start=2):
        key = (row.patient_id, row.issuer)
        patient = patients.get(key)
        label = label_of(row, patient, number)
        if label is None:
            continue
        labels.append(label)
        keys.append(key)
        types.append(row.tumour_type)
        profile = patient.expression if patient else None
        samples.append(profile.sample_id if profile else "")
        patient_samples.append(patient.expression_samples if patient else ())
        profiles.append(dict(profile.values) if profile else None)
        model_key, lesions = embeddings.get(key, ("", None))
        entries.append((patient, lesions if model_key == cytact_model else None))
    data = fusion_data(
        entries,
        expression[:2] if expression else None,
        imaging_dim,
        np.array(labels),
        histology_dim=histology_dim,
        histology_model=histology_model or None,
    )
    card = expression[2] if expression else None
    trained_on = frozenset(card.parameters.get("training_samples", ())) if card else frozenset()
    imported = {sample for p in patients.values() for sample in p.expression_samples}
    return FusionCohort(
        data,
        keys,
        types,
        samples,
        card.sha256 if card else "",
        frozenset(card.parameters.get("training_samples", ())) if card else frozenset(),
        cytact_model,
        imaging_dim,
        expression,
        profiles,
        histology_model,
        mil_patients,
        patient_samples,
        frozenset(tuple(p) for p in card.parameters.get("training_patients", ())) if card else frozenset(),
        len(trained_on - imported),
    )


@dataclass(frozen=True)
class FusionTrainingResult:
    card: ModelCard
    weights: Path
    test_metrics: dict[str, dict[str, float]]  # model → metrics on its test patients
    intervals: dict[str, dict[str, tuple[float, float]]]
    report: Path


HISTOLOGY_ARM_NOTE = (
    "Modalities: histology (whole-slide image: gated-attention MIL over ResNet-50 patch features, as published, "
    "but with a patch encoder trained by this site, not ImageNet weights), genomic, clinical, and the PET CytAct "
    "lesion embedding as a fourth modality that the published method does not have."
)


def stratified_split(
    labels: np.ndarray, tumour_types: Sequence[str], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """70/10/20, stratified by response and, when given and large enough, by tumour type; says which."""
    rows = np.arange(len(labels))
    strata = np.array([f"{y}|{t}" for y, t in zip(labels, tumour_types)])
    how = "response and tumour type"
    if not any(tumour_types) or min(np.unique(strata, return_counts=True)[1]) < 5:
        strata, how = labels.astype(str), "response" + (" (tumour-type strata too small)" if any(tumour_types) else "")
    rest, test = train_test_split(rows, test_size=0.2, stratify=strata, random_state=seed)
    train, validation = train_test_split(rest, test_size=0.125, stratify=strata[rest], random_state=seed)
    return train, validation, test, how


def trained_on_patient(cohort: FusionCohort, row: int) -> bool:
    """Whether the expression model was trained on this row's patient: by identity (PatientID and issuer, from
    the model's card), or by any expression sample imported for the patient (not only the one the fusion uses:
    one patient under two sample IDs is one patient)."""
    samples = set(cohort.patient_samples[row] if cohort.patient_samples else ()) | {cohort.expression_samples[row]}
    return cohort.keys[row] in cohort.expression_training_patients or bool(
        (samples - {""}) & cohort.expression_training_samples
    )


def _guard_leakage(
    cohort: FusionCohort, train: np.ndarray, test: np.ndarray, retrain: bool, seed: int, out: Path
) -> tuple[FusionData, str, str]:
    """The fusion must not be tested on patients the expression model was trained on (by patient identity, see
    `trained_on_patient`): refuse, or (`retrain`) retrain the expression transformer on the fusion training split
    (saved beside the fusion, with its card), and recompute the genomic modality. Returns the data, what was done,
    and the expression weights' sha256."""
    if cohort.expression is None:
        return cohort.data, "no expression model: no genomic modality", ""
    leaked = [i for i in test if trained_on_patient(cohort, i)]
    if not leaked:
        checked = (
            "checked by patient (PatientID and issuer, and every imported sample of the patient): no test patient "
            "was in the expression model's training"
        )
        if cohort.unmapped_training_samples:
            checked += (
                f"; {cohort.unmapped_training_samples} of its training samples are neither imported here nor named "
                "with a PatientID in its card, so their patients could not be checked"
            )
        return cohort.data, checked, cohort.expression_sha256
    if not retrain:
        raise CohortError(
            f"{len(leaked)} test patient(s) of the fusion (e.g. {cohort.keys[leaked[0]][0]}) are patients the "
            "expression model was trained on (by PatientID or by one of their imported samples): their genomic "
            "embedding would leak the label. Use weights trained without them, or --retrain-expression to retrain it "
            "on the fusion's training split"
        )
    model, genes, card = cohort.expression
    settings = TransformerSettings(**card.parameters["transformer"])
    rows = [i for i in train if cohort.profiles[i] is not None]
    panel = GenePanel(genes, "", "")
    features = panel_features([cohort.profiles[i] for i in rows], panel)
    retrained = train_transformer(features, cohort.data.labels[rows], replace(settings, seed=seed))
    genomic = np.zeros_like(cohort.data.inputs["genomic"])
    with_profile = [i for i, profile in enumerate(cohort.profiles) if profile is not None]
    if with_profile:
        genomic[with_profile] = embed(retrained, panel_features([cohort.profiles[i] for i in with_profile], panel))
    data = FusionData({**cohort.data.inputs, "genomic": genomic}, cohort.data.present, cohort.data.labels)
    samples = [cohort.expression_samples[i] for i in rows]
    trained_patients = [list(cohort.keys[i]) for i in rows]
    saved = save_weights(
        retrained.state_dict(),
        out / "expression-transformer-fusion-split.pt",
        replace(
            card,
            version=f"{card.version}+fusion-split",
            training_data=f"{card.training_data}; retrained on the fusion's {len(rows)} training patients only",
            metrics={},
            parameters={**card.parameters, "training_samples": samples, "training_patients": trained_patients},
            weights_file="",
            sha256="",
        ),
    )
    done = (
        f"expression transformer retrained on the {len(rows)} training patients with expression (leakage guard), "
        f"saved as {saved.weights_file}"
    )
    return data, done, saved.sha256


def _unimodal(data: FusionData, train: np.ndarray, test: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardised L2 logistic regression on one modality, fitted and tested on the patients that have it."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    column = MODALITIES.index(modality)
    fit_rows = train[data.present[train, column]]
    test_rows = test[data.present[test, column]]
    if len(np.unique(data.labels[fit_rows])) < 2 or not len(test_rows):
        return test_rows, np.full(len(test_rows), np.nan)
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(data.inputs[modality][fit_rows], data.labels[fit_rows])
    return test_rows, model.predict_proba(data.inputs[modality][test_rows])[:, 1]


def train_fusion_model(
    cohort: FusionCohort,
    out: Path,
    settings: FusionSettings = FusionSettings(),
    bootstrap: int = 1000,
    name: str = "immunode-attention-fusion",
    version: str = "1.0.0",
    training_data: str = "",
    synthetic: bool = False,
    retrain_expression: bool = False,
) -> FusionTrainingResult:
    """Stratified 70/10/20 split; the attention fusion, the concatenation ablation and the unimodal baselines
    (clinical-only, histology-only, imaging-only, genomic-only logistic regression) on the same test set;
    bootstrap 95 % CIs; per-patient modality weights; the attention model saved with its card."""
    out.mkdir(parents=True, exist_ok=True)
    usable = np.flatnonzero(cohort.data.present.any(axis=1))
    cohort = replace(
        cohort,
        data=cohort.data.rows(usable),
        keys=[cohort.keys[i] for i in usable],
        tumour_types=[cohort.tumour_types[i] for i in usable],
        expression_samples=[cohort.expression_samples[i] for i in usable],
        patient_samples=[cohort.patient_samples[i] for i in usable] if cohort.patient_samples else [],
        profiles=[cohort.profiles[i] for i in usable] if cohort.profiles else [],
    )
    train, validation, test, stratified = stratified_split(cohort.data.labels, cohort.tumour_types, settings.seed)
    column = MODALITIES.index("histology")
    fitted = [cohort.keys[i] for i in test if cohort.data.present[i, column] and cohort.keys[i] in cohort.mil_patients]
    if fitted:
        raise CohortError(
            f"{len(fitted)} test patient(s) of the fusion (e.g. {fitted[0][0]}) are among the patients the histology "
            "MIL was trained on: their slide embedding would leak the label. Train the MIL on other patients"
        )
    data, leakage, expression_sha256 = _guard_leakage(cohort, train, test, retrain_expression, settings.seed, out)
    keys = cohort.keys
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # model → (test rows, probabilities)
    models = {}
    for kind in ("attention", "concat"):
        models[kind] = train_fusion(data.rows(train), data.rows(validation), kind, settings)
        predictions[kind] = (test, predict(models[kind], data.rows(test))[0])
    for modality in ("clinical", "histology", "imaging", "genomic"):
        predictions[f"{modality}-only"] = _unimodal(data, np.concatenate([train, validation]), test, modality)
    test_metrics, intervals, curves, sizes = {}, {}, {}, {}
    for model_name, (rows, probability) in predictions.items():
        labels = data.labels[rows]
        sizes[model_name] = len(rows)
        if not len(rows) or np.isnan(probability).all():
            continue
        test_metrics[model_name] = classification_metrics(labels, probability)
        every = bootstrap_intervals(
            labels, probability, classification_metrics, resamples=bootstrap, seed=settings.seed
        )
        intervals[model_name] = {metric: every.get(metric, (float("nan"), float("nan"))) for metric in METRIC_NAMES}
        curves[model_name] = (labels, probability)
    plot_curves(curves, out, "attention fusion, ablation and unimodal baselines, test set")
    rows_out = [
        {"model": m, "metric": metric, "value": test_metrics[m][metric], "ci_low": low, "ci_high": high, "n": sizes[m]}
        for m in test_metrics
        for metric, (low, high) in intervals[m].items()
    ]
    write_metrics(out / "metrics.csv", rows_out)
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
                "cytact_model": cohort.cytact_model,
                "histology_model": cohort.histology_model,
                "leakage_guard": leakage,
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
        f"{len(keys)} patients ({int(data.labels.sum())} responders); split 70/10/20 "
        f"({len(train)}/{len(validation)}/{len(test)}) stratified by {stratified}; minority oversampled in training; "
        f"95 % bootstrap CIs ({bootstrap} resamples) on the test set. Leakage guard: {leakage}.",
        HISTOLOGY_ARM_NOTE
        + (f" Slide embeddings of {cohort.histology_model}." if cohort.histology_model else " No patient had a slide."),
        "Differences from the published method that affect these results: "
        + "; ".join(FUSION_PUBLISHED_DIFFERENCES)
        + ".",
        "",
        "| model | n test | " + " | ".join(METRIC_NAMES) + " |",
        "|---|---|" + "---|" * len(METRIC_NAMES),
    ]
    for model_name in test_metrics:
        values, ci = test_metrics[model_name], intervals[model_name]
        cells = [
            f"{format_metric(values[m])} ({format_metric(ci[m][0])}-{format_metric(ci[m][1])})" for m in METRIC_NAMES
        ]
        lines.append(f"| {model_name} | {sizes[model_name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Unimodal baselines: standardised L2 logistic regression on one modality, trained on the training and "
        "validation patients that have it, tested on the test patients that have it (n test).",
        "Mean modality weight where present: " + ", ".join(f"{m} {w:.2f}" for m, w in mean_weights.items()) + ".",
        "Per-patient weights: modality_weights.csv. Modalities present: "
        + ", ".join(f"{m} {int(data.present[:, j].sum())}" for j, m in enumerate(MODALITIES))
        + ".",
        f"Weights: {card.weights_file}, sha256 {card.sha256}" + (" (SYNTHETIC training data)." if synthetic else "."),
    ]
    report.write_text("\n".join(lines) + "\n")
    return FusionTrainingResult(card, out / card.weights_file, test_metrics, intervals, report)


def evaluate_fusion_model(cohort: FusionCohort, weights: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data, keys = cohort.data, cohort.keys
    model, card = load_fusion(weights)
    usable = data.present.any(axis=1)
    data, keys = data.rows(np.flatnonzero(usable)), [k for k, u in zip(keys, usable) if u]
    probability, _ = predict(model, data)
    values = classification_metrics(data.labels, probability)
    write_metrics(out / "metrics.csv", [{"model": card.name, **values}])
    plot_curves({card.name: (data.labels, probability)}, out, f"{card.name}")
    (out / "report.md").write_text(
        f"# {card.name} {card.version} on {len(keys)} patients (research use only)\n\n"
        + "\n".join(f"- {n}: {format_metric(values[n])}" for n in METRIC_NAMES)
        + "\n"
    )
    return values
