"""TID 1500 Measurement Report building blocks shared by every pipeline's SR: the device observer, the
algorithm and model identities, the research-use statements, private concepts, and the Comprehensive 3D SR
document itself (`measurement_document`).

Where results go in the report (docs/conformance-outputs.md): each lesion's measurement groups under "Imaging
Measurements" (TID 1411, with its segment and its outline); results of the patient or the study (a summary over
the lesions, response models, RECIST) never there, where viewers take every group for a lesion to draw, but as
measurements under "Derived Imaging Measurements" (TID 1420) and coded evaluations under "Qualitative
Evaluations", beside the research-use statement and the pipeline's statements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
DERIVED_IMAGING_MEASUREMENTS = hd.sr.CodedConcept("126011", "DCM", "Derived Imaging Measurements")
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


@dataclass(frozen=True)
class StudyResults:
    """Results of the patient or the study, not of one lesion (a summary over the lesions, response models,
    RECIST): numbers under "Derived Imaging Measurements", coded evaluations under "Qualitative Evaluations"."""

    measurements: tuple[hd.sr.Measurement, ...] = ()
    evaluations: tuple[hd.sr.QualitativeEvaluation, ...] = ()

    def __add__(self, other: StudyResults) -> StudyResults:
        return StudyResults(self.measurements + other.measurements, self.evaluations + other.evaluations)


def research_use_container(
    summary: str, statements: Sequence[str] = (), evaluations: Sequence[hd.sr.QualitativeEvaluation] = ()
) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = [
        *(item for evaluation in evaluations for item in evaluation),  # templates: lists of content items
        *(
            hd.sr.TextContentItem(
                name=COMMENT, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for text in (RESEARCH_USE, summary, *statements)
        ),
    ]
    return container


def derived_measurements_container(measurements: Sequence[hd.sr.Measurement]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=DERIVED_IMAGING_MEASUREMENTS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = [item for measurement in measurements for item in measurement]
    return container


def measurement_document(
    source_images: Sequence[Dataset],
    other_evidence: Sequence[Dataset],
    groups: Sequence[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    identity: AlgorithmIdentity,
    procedure: hd.sr.CodedConcept,
    summary: str,
    statements: Sequence[str],
    series_number: int,
    series_description: str,
    previous_report: Dataset | None = None,
    reader: str = "",
    study_results: StudyResults = StudyResults(),
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding a TID 1500 Measurement Report by this node as the observing device: the
    lesions' `groups` under "Imaging Measurements" (left out when there is no lesion), `study_results` under
    "Derived Imaging Measurements" and "Qualitative Evaluations", with the research-use statement, the summary
    and the pipeline's statements. `reader`: the person whose annotations defined the lesions, a person observer
    beside the device (the document stays UNVERIFIED: see `pipelines.output.versions`)."""
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
    # highdicom needs an "Imaging Measurements" group; TID 1500 needs one of the three containers only.
    placeholder = (
        [hd.sr.MeasurementsAndQualitativeEvaluations(hd.sr.TrackingIdentifier(generate_uid(), "none"))]
        if not groups
        else []
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure,
        imaging_measurements=list(groups) or placeholder,
    )
    content = report[0].ContentSequence
    if placeholder:
        content[:] = [item for item in content if item.ConceptNameCodeSequence[0].CodeValue != "126010"]
    if study_results.measurements:
        content.append(derived_measurements_container(study_results.measurements))
    content.append(research_use_container(summary, statements, study_results.evaluations))
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
