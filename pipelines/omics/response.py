"""Patient-level response models served with the PET and histology reports, from the patient's imported data:
the expression transformer's response probability, the attention fusion's probability with its modality
weights (imaging = the CytAct network's lesion embeddings averaged per patient, genomic = the transformer's
embedding, clinical = an MLP over the clinical variables), and the LIPI category.

Every part that cannot be computed says why; nothing here raises for absent data or weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from common.types import ClinicalVariables, PatientData
from models.cards import ModelCard
from models.device import select_device
from models.errors import ModelError
from models.expression_transformer import ExpressionTransformer, GenePanel, embed, panel_features, predict_proba
from models.fusion import MODALITIES, FusionData, predict
from models.serving import load_expression, load_fusion
from pipelines.omics.settings import ResponseModelSettings
from pipelines.omics.types import BloodChange, ResponsePredictions
from pipelines.types import ModelIdentity

logger = logging.getLogger(__name__)

CLINICAL_FEATURES = ("age_years", "male", "ecog", "log_ldh_over_uln", "log_dnlr")


def clinical_features(record: ClinicalVariables | None) -> np.ndarray:
    """The clinical modality's variables; NaN where unknown (imputed by the fusion model)."""
    if record is None:
        return np.full(len(CLINICAL_FEATURES), np.nan)
    ratio = record.ldh / record.ldh_uln if record.ldh and record.ldh_uln else None
    return np.array(
        [
            np.nan if record.age_years is None else record.age_years,
            {"M": 1.0, "F": 0.0}.get(record.sex, np.nan),
            np.nan if record.ecog is None else float(record.ecog),
            np.nan if ratio is None else math.log(ratio),
            np.nan if not record.dnlr else math.log(record.dnlr),
        ],
        dtype=float,
    )


def imaging_features(embeddings: Sequence[Sequence[float]] | None, dim: int) -> np.ndarray | None:
    """The patient's lesion embeddings averaged (attention-free pooling, our documented choice)."""
    if not embeddings:
        return None
    values = np.asarray(embeddings, dtype=float)
    return values.mean(axis=0) if values.shape[1] == dim else None


def model_identity(card: ModelCard) -> ModelIdentity:
    return ModelIdentity(card.name, card.version, card.sha256, card.synthetic_training_data)


def fusion_data(
    patients: Sequence[tuple[PatientData | None, Sequence[Sequence[float]] | None]],
    expression: tuple[ExpressionTransformer, tuple[str, ...]] | None,
    imaging_dim: int,
    labels: np.ndarray | None = None,
    histology_dim: int = 1,
    histology_model: str | None = None,
) -> FusionData:
    """Modality inputs of several patients for the fusion model (absent modalities flagged in `present`).
    The histology modality is the patient's slide embedding when it comes from `histology_model` (a MIL key)
    and has `histology_dim` values; None takes no slide."""
    genomic_dim = expression[0].classifier.in_features if expression else 1
    widths = {"histology": histology_dim, "imaging": imaging_dim, "genomic": genomic_dim}
    widths["clinical"] = len(CLINICAL_FEATURES)
    inputs = {m: np.zeros((len(patients), widths[m])) for m in MODALITIES}
    present = np.zeros((len(patients), len(MODALITIES)), dtype=bool)
    column = {m: i for i, m in enumerate(MODALITIES)}
    for row, (patient, embeddings) in enumerate(patients):
        slide = patient.slide if patient is not None else None
        if slide is not None and slide.mil_model == histology_model and len(slide.embedding) == histology_dim:
            inputs["histology"][row], present[row, column["histology"]] = slide.embedding, True
        imaging = imaging_features(embeddings, imaging_dim)
        if imaging is not None:
            inputs["imaging"][row], present[row, column["imaging"]] = imaging, True
        if expression is not None and patient is not None and patient.expression is not None:
            model, genes = expression
            features = panel_features([patient.expression.values], GenePanel(genes, "", ""))
            inputs["genomic"][row], present[row, column["genomic"]] = embed(model, features)[0], True
        if patient is not None and patient.clinical is not None:
            inputs["clinical"][row], present[row, column["clinical"]] = clinical_features(patient.clinical), True
    return FusionData(inputs, present, labels)


def _lipi(patient: PatientData | None) -> tuple[str, float | None, str]:
    if patient is None or patient.clinical is None:
        return "", None, "no clinical data imported for this patient"
    record = patient.clinical
    if not record.lipi:
        missing = [
            name
            for name, value in (
                ("dNLR (neutrophils, wbc)", record.dnlr),
                ("LDH", record.ldh),
                ("LDH ULN", record.ldh_uln),
            )
            if value is None
        ]
        return "", record.dnlr, f"{', '.join(missing)} unknown in the imported clinical data"
    return record.lipi, record.dnlr, ""


def blood_changes(patient: PatientData | None, settings: ResponseModelSettings) -> tuple[tuple[BloodChange, ...], str]:
    """Δ% = (T1 - T0) / T0 x 100 of each declared marker imported at both time points, and why none when none."""
    if patient is None or not patient.blood:
        return (), "no blood immune profile imported for this patient"
    at = {(b.marker, b.time_point): b for b in patient.blood}
    changes = []
    for marker in settings.blood_markers:
        before, after = at.get((marker.name, "T0")), at.get((marker.name, "T1"))
        if before is None or after is None:
            continue
        delta = (after.value - before.value) / before.value * 100.0 if before.value else None
        changes.append(BloodChange(marker.name, marker.unit, before.value, after.value, delta))
    return tuple(changes), "" if changes else "no marker imported at both T0 and T1"


def predict_response(
    patient: PatientData | None,
    lesion_embeddings: Sequence[Sequence[float]] | None,
    cytact_model: ModelIdentity | None,
    settings: ResponseModelSettings,
    device: str = "auto",
) -> ResponsePredictions:
    """The patient's response predictions; the expression transformer runs on `device` (`pipelines.compute`)."""
    lipi, dnlr, lipi_reason = _lipi(patient)
    changes, blood_reason = blood_changes(patient, settings)
    values: dict = {
        "lipi": lipi,
        "dnlr": dnlr,
        "lipi_not_computed": lipi_reason,
        "blood_changes": changes,
        "blood_not_computed": blood_reason,
    }
    expression = None
    if settings.expression_weights is None:
        values["expression_not_computed"] = "no expression model configured (pipelines.response.expression_weights)"
    else:
        try:
            model, genes, card = load_expression(settings.expression_weights, select_device(device).torch_device)
            expression = (model, genes)
            values["expression_model"] = model_identity(card)
        except ModelError as error:
            values["expression_not_computed"] = f"expression model not usable: {error}"
            logger.error("expression model not usable: %s", error)
    if expression is not None:
        if patient is None or patient.expression is None:
            values["expression_not_computed"] = "no expression data imported for this patient"
        else:
            try:
                features = panel_features([patient.expression.values], GenePanel(expression[1], "", ""))
                values["expression_probability"] = float(predict_proba(expression[0], features)[0])
                values["expression_sample"] = patient.expression.sample_id
            except ModelError as error:
                values["expression_not_computed"] = f"sample {patient.expression.sample_id}: {error}"
    if settings.fusion_weights is None:
        values["fusion_not_computed"] = "no fusion model configured (pipelines.response.fusion_weights)"
        return ResponsePredictions(**values)
    try:
        fusion, card = load_fusion(settings.fusion_weights)
    except ModelError as error:
        logger.error("fusion model not usable: %s", error)
        values["fusion_not_computed"] = f"fusion model not usable: {error}"
        return ResponsePredictions(**values)
    parameters, notes = card.parameters, []
    if set(parameters.get("dims", {})) != set(MODALITIES):
        values["fusion_not_computed"] = (
            f"fusion weights trained on the modalities {sorted(parameters.get('dims', {}))}, this node fuses "
            f"{list(MODALITIES)}: retrain them (immunode train fusion)"
        )
        return ResponsePredictions(**values)
    if cytact_model is None or parameters.get("cytact_model") != cytact_model.key:
        lesion_embeddings = None
        if cytact_model is not None:
            notes.append("imaging left out: the fusion was trained on embeddings of another CytAct model")
    slide = patient.slide if patient is not None else None
    if slide is not None and slide.mil_model != parameters.get("histology_model"):
        notes.append("histology left out: the fusion was trained on slide embeddings of another MIL model")
    genomic = expression
    if (
        expression is not None
        and parameters.get("expression_weights_sha256") != values["expression_model"].weights_sha256
    ):
        genomic = None
        notes.append("genomic left out: the fusion was trained with another expression model")
    dims = parameters["dims"]
    data = fusion_data(
        [(patient, lesion_embeddings)],
        genomic,
        dims["imaging"],
        histology_dim=dims["histology"],
        histology_model=parameters.get("histology_model"),
    )
    if not data.present.any():
        values["fusion_not_computed"] = "; ".join(notes + ["no modality available for this patient"])
        return ResponsePredictions(**values)
    if genomic is None:  # the fusion model still needs an input of the trained width
        data.inputs["genomic"] = np.zeros((1, parameters["dims"]["genomic"]))
    probability, weights = predict(fusion, data)
    values["fusion_probability"] = float(probability[0])
    values["fusion_weights"] = tuple(
        (modality, float(weights[0, i])) for i, modality in enumerate(MODALITIES) if data.present[0, i]
    )
    values["fusion_model"] = model_identity(card)
    missing = [m for i, m in enumerate(MODALITIES) if not data.present[0, i]]
    values["fusion_not_computed"] = "; ".join(notes + ([f"modalities absent: {', '.join(missing)}"] if missing else []))
    return ResponsePredictions(**values)
