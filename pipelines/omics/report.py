"""The patient-level response models in an SR (the PET report's and the histology report's): the expression
transformer's and the attention fusion's response probabilities with the fusion's modality weights, dNLR and the
LIPI category, the imported blood profile's change, as measurements and qualitative evaluations, and the text that
states each of them or why it is absent."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd

from common.version import __version__
from models import FUSION_PUBLISHED_DIFFERENCES
from pipelines.omics.types import ResponsePredictions
from pipelines.output.sr import (
    NOT_A_PREDICTION,
    UNIT_NONE,
    StudyResults,
    measurement,
    model_algorithm,
    private_concept,
    ucum,
)
from pipelines.types import ModelIdentity

UNIT_PERCENT = ucum("%", "percent")
RESPONSE_EXPRESSION = private_concept("ICI_RESP_EXPR", "ICI response probability, expression transformer")
RESPONSE_FUSION = private_concept("ICI_RESP_FUSION", "ICI response probability, attention fusion")
MODALITY_WEIGHTS = {
    modality: private_concept(f"FUSW_{modality.upper()}", f"Fusion modality weight, {modality}")
    for modality in ("histology", "imaging", "genomic", "clinical")
}
DNLR = private_concept("DNLR", "Derived neutrophil-to-lymphocyte ratio")
LIPI = private_concept("LIPI", "Lung Immune Prognostic Index")
LIPI_VALUES = {
    "good": private_concept("LIPI_GOOD", "LIPI good"),
    "intermediate": private_concept("LIPI_INTERMED", "LIPI intermediate"),
    "poor": private_concept("LIPI_POOR", "LIPI poor"),
}


def _lipi_algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name="immunode-lipi", version=__version__, parameters=["Mezquita 2018", "dNLR > 3", "LDH > ULN"]
    )


def blood_concept(marker: str) -> hd.sr.CodedConcept:
    return private_concept(f"BLD_{marker.upper()}"[:16], f"Blood {marker}: relative change T0 to T1")


def _blood_algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name="immunode-blood-profile", version=__version__, parameters=["(T1 - T0) / T0 x 100"]
    )


def response_results(response: ResponsePredictions) -> StudyResults:
    """Patient-level response models: probabilities, fusion modality weights, dNLR, LIPI, blood changes."""
    measurements, evaluations = [], []
    if response.expression_probability is not None and response.expression_model is not None:
        measurements.append(
            measurement(
                RESPONSE_EXPRESSION,
                response.expression_probability,
                UNIT_NONE,
                model_algorithm(response.expression_model),
            )
        )
    if response.fusion_probability is not None and response.fusion_model is not None:
        fusion = model_algorithm(response.fusion_model)
        measurements.append(measurement(RESPONSE_FUSION, response.fusion_probability, UNIT_NONE, fusion))
        measurements += [
            measurement(MODALITY_WEIGHTS[m], weight, UNIT_NONE, fusion) for m, weight in response.fusion_weights
        ]
    if response.dnlr is not None:
        measurements.append(measurement(DNLR, response.dnlr, UNIT_NONE, _lipi_algorithm()))
    if response.lipi:
        evaluations.append(hd.sr.QualitativeEvaluation(LIPI, LIPI_VALUES[response.lipi]))
    measurements += [
        measurement(blood_concept(change.marker), change.delta_percent, UNIT_PERCENT, _blood_algorithm())
        for change in response.blood_changes
        if change.delta_percent is not None
    ]
    return StudyResults(tuple(measurements), tuple(evaluations))


def _identity_text(model: ModelIdentity) -> str:
    text = f"{model.name} {model.version} (weights sha256:{model.weights_sha256})"
    return text + (" [SYNTHETIC training data, no clinical meaning]" if model.synthetic else "")


def fusion_arms_statement(modalities: Sequence[str]) -> str:
    """How this patient's fusion differs from the published method (histology, genomic, clinical)."""
    pet = (
        " The PET CytAct lesion embedding is a fourth modality that the published method does not have."
        if "imaging" in modalities
        else ""
    )
    always = " Differences from the published method: " + "; ".join(FUSION_PUBLISHED_DIFFERENCES) + "."
    if "histology" in modalities:
        return (
            "Histology modality: the whole-slide image's gated-attention MIL embedding, as published, with a patch "
            "encoder trained by this site (not ImageNet weights)." + pet + always
        )
    return "Deviation from the published method: no whole-slide histology for this patient." + pet + always


def response_statements(response: ResponsePredictions | None) -> list[str]:
    if response is None:
        return []
    statements = []
    if response.expression_probability is not None and response.expression_model is not None:
        statements.append(
            f"Expression transformer {_identity_text(response.expression_model)}: response probability "
            f"{response.expression_probability:.3f} from expression sample {response.expression_sample}. "
            + NOT_A_PREDICTION
        )
    else:
        statements.append(f"Expression transformer not computed: {response.expression_not_computed}.")
    if response.fusion_probability is not None and response.fusion_model is not None:
        weights = ", ".join(f"{m} {w:.2f}" for m, w in response.fusion_weights)
        notes = f" ({response.fusion_not_computed})" if response.fusion_not_computed else ""
        statements.append(
            f"Attention fusion {_identity_text(response.fusion_model)}: response probability "
            f"{response.fusion_probability:.3f}; modality weights {weights}{notes}. "
            f"{fusion_arms_statement([m for m, _ in response.fusion_weights])} " + NOT_A_PREDICTION
        )
    else:
        statements.append(f"Attention fusion not computed: {response.fusion_not_computed}.")
    if response.lipi:
        statements.append(
            f"LIPI (Mezquita 2018, from imported clinical data): {response.lipi}; dNLR {response.dnlr:.2f}. "
            "Prognostic index, research reference."
        )
    else:
        statements.append(f"LIPI not computed: {response.lipi_not_computed}.")
    if response.blood_changes:
        changes = "; ".join(
            f"{c.marker} {c.t0:g} -> {c.t1:g} {c.unit}".rstrip()
            + (f" ({c.delta_percent:+.1f} %)" if c.delta_percent is not None else " (T0 is 0: change not defined)")
            for c in response.blood_changes
        )
        statements.append(f"Blood immune profile T0 -> T1 (imported): {changes}. Research reference.")
    else:
        statements.append(f"Blood immune profile not reported: {response.blood_not_computed}.")
    return statements
