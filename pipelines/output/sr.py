"""TID 1500 Measurement Report building blocks shared by every pipeline's SR: the device observer, the
algorithm and model identities, the research-use statements, private concepts, and the Comprehensive 3D SR
document itself (`measurement_document`)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.output.sources import conform_copied_attributes
from pipelines.types import AlgorithmIdentity, ModelIdentity

MANUFACTURER = "immunode"
RESEARCH_USE = "RESEARCH USE ONLY - not for diagnosis or treatment decisions"
NOT_A_PREDICTION = "Research reference, not a prediction of treatment response for this patient."
SYNTHETIC_WEIGHTS = "SYNTHETIC DEMONSTRATION WEIGHTS - trained on simulated lesions, no biological meaning"
# No standard code exists for several concepts yet: a private coding scheme, named in the SR.
PRIVATE_SCHEME = "99IMMUNODE"

QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")


def private_concept(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


def ucum(unit: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(unit, "UCUM", meaning)


UNIT_ML, UNIT_MM, UNIT_NONE = ucum("ml", "milliliter"), ucum("mm", "millimeter"), ucum("1", "no units")


def measurement(
    name: hd.sr.CodedConcept,
    value: float,
    unit: hd.sr.CodedConcept,
    algorithm: hd.sr.AlgorithmIdentification,
    derivation: hd.sr.CodedConcept | None = None,
) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=unit, derivation=derivation, algorithm_id=algorithm)


def new_instance(series_number: int) -> dict[str, object]:
    """The identity of a new object of ours: a new series of one instance, by this manufacturer."""
    return {
        "series_instance_uid": generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
    }


def sr_algorithm(identity: AlgorithmIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=identity.name,
        version=identity.version,
        parameters=[f"sha256:{identity.parameters_sha256}", identity.parameters[:64]],
    )


def model_algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    parameters = [f"sha256:{model.weights_sha256}"] + (["synthetic demonstration weights"] if model.synthetic else [])
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version, parameters=parameters)


def model_statement(model: ModelIdentity, what: str) -> str:
    """A trained model's result in words: the model, its weights hash and, for synthetic weights, that warning."""
    return f"{model.name} {model.version} (weights sha256:{model.weights_sha256}): {what}. {NOT_A_PREDICTION}" + (
        f" {SYNTHETIC_WEIGHTS}." if model.synthetic else ""
    )


def source_statements(notes: Sequence[str]) -> list[str]:
    """What was conformed in the source images' copied attributes (the sources themselves are unchanged)."""
    if not notes:
        return []
    return [
        "Source attributes conformed before deriving this object (the stored images are unchanged): " + "; ".join(notes)
    ]


def research_use_container(summary: str, statements: Sequence[str] = ()) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = [
        hd.sr.TextContentItem(name=COMMENT, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in (RESEARCH_USE, summary, *statements)
    ]
    return container


def measurement_document(
    source_images: Sequence[Dataset],
    other_evidence: Sequence[Dataset],
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations],
    identity: AlgorithmIdentity,
    procedure: hd.sr.CodedConcept,
    summary: str,
    statements: Sequence[str],
    series_number: int,
    series_description: str,
    previous_report: Dataset | None = None,
    reader: str = "",
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding a TID 1500 Measurement Report by this node as the observing device, with
    the research-use statement, the summary and the pipeline's statements under "Qualitative Evaluations".
    `reader`: the person whose annotations defined the lesions, a person observer beside the device (the
    document stays UNVERIFIED: see `pipelines.output.versions`)."""
    person = (
        hd.sr.ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=reader),
        )
        if reader
        else None
    )
    observation_context = hd.sr.ObservationContext(
        observer_person_context=person,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(prefix=None, entropy_srcs=[MANUFACTURER, identity.name]),
                name=identity.name,
                manufacturer_name=MANUFACTURER,
                model_name=f"{identity.name} {identity.version}",
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context, procedure_reported=procedure, imaging_measurements=list(groups)
    )
    report[0].ContentSequence.append(research_use_container(summary, statements))
    document = hd.sr.Comprehensive3DSR(
        evidence=[*source_images, *other_evidence],
        content=report,
        **new_instance(series_number),
        is_complete=True,
        is_final=False,
        previous_versions=[previous_report] if previous_report is not None else None,
        series_description=series_description,
    )
    conform_copied_attributes(document)
    return document
