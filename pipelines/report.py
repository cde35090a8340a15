"""Report stage: a DICOM SEG (one segment per lesion) and a Comprehensive 3D SR holding the TID 1500
Measurement Report, both built with highdicom, placed in the source study, each in a new series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from immunode import __version__
from pipelines.lesions import label_volume
from pipelines.output_sources import conform_sources
from pipelines.types import (
    AlgorithmIdentity,
    CtLesion,
    CytActSummary,
    Lesion,
    ModelIdentity,
    PetQuantResult,
    Report,
    ReportFile,
    ResponsePredictions,
)
from pipelines.validation import validate_report, validate_segmentation

logger = logging.getLogger(__name__)

MANUFACTURER = "immunode"
SEG_SERIES_NUMBER = 990
SR_SERIES_NUMBER = 991
RESEARCH_USE = "RESEARCH USE ONLY - not for diagnosis or treatment decisions"

SUVBW = hd.sr.CodedConcept("126401", "DCM", "SUVbw")
UNIT_SUVBW = hd.sr.CodedConcept("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
UNIT_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
UNIT_GRAM = hd.sr.CodedConcept("g", "UCUM", "gram")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
PET_WHOLE_BODY = hd.sr.CodedConcept("44139-4", "LN", "PET whole body")
NONE_FOUND = hd.sr.CodedConcept("260413007", "SCT", "None")
# No standard code exists for these concepts yet: a private coding scheme, named in the SR.
PRIVATE_SCHEME = "99IMMUNODE"
CYTACT = hd.sr.CodedConcept("CYTACT", PRIVATE_SCHEME, "Cytolytic activity score (predicted)")
CYTACT_GROUP = hd.sr.CodedConcept("CYTACT_GROUP", PRIVATE_SCHEME, "CytAct group (minimum vs cut-off)")
CYTACT_HETEROGENEITY = hd.sr.CodedConcept("CYTACT_HET", PRIVATE_SCHEME, "CytAct heterogeneity (variance vs cut-off)")
VARIANCE = hd.sr.CodedConcept("VARIANCE", PRIVATE_SCHEME, "Variance")
UNIT_NONE = hd.sr.CodedConcept("1", "UCUM", "no units")
UNIT_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
LOCATIONS = {
    "lung": codes.SCT.Lung,
    "thorax": codes.SCT.Thorax,
    "abdomen": codes.SCT.Abdomen,
    "pelvis": codes.SCT.Pelvis,
    "head and neck": codes.SCT.HeadAndNeck,
}
RECIST_TARGET = hd.sr.CodedConcept("RECIST_TARGET", PRIVATE_SCHEME, "Meets RECIST 1.1 target lesion size rule")
RESPONSE_EXPRESSION = hd.sr.CodedConcept(
    "ICI_RESP_EXPR", PRIVATE_SCHEME, "ICI response probability, expression transformer"
)
RESPONSE_FUSION = hd.sr.CodedConcept("ICI_RESP_FUSION", PRIVATE_SCHEME, "ICI response probability, attention fusion")
MODALITY_WEIGHTS = {
    modality: hd.sr.CodedConcept(f"FUSW_{modality.upper()}", PRIVATE_SCHEME, f"Fusion modality weight, {modality}")
    for modality in ("imaging", "genomic", "clinical")
}
DNLR = hd.sr.CodedConcept("DNLR", PRIVATE_SCHEME, "Derived neutrophil-to-lymphocyte ratio")
LIPI = hd.sr.CodedConcept("LIPI", PRIVATE_SCHEME, "Lung Immune Prognostic Index")
LIPI_VALUES = {
    "good": hd.sr.CodedConcept("LIPI_GOOD", PRIVATE_SCHEME, "LIPI good"),
    "intermediate": hd.sr.CodedConcept("LIPI_INTERMED", PRIVATE_SCHEME, "LIPI intermediate"),
    "poor": hd.sr.CodedConcept("LIPI_POOR", PRIVATE_SCHEME, "LIPI poor"),
}
NOT_A_PREDICTION = "Research reference, not a prediction of treatment response for this patient."
SYNTHETIC_WEIGHTS = "SYNTHETIC DEMONSTRATION WEIGHTS - trained on simulated lesions, no biological meaning"
RECIST_ON_PET = (
    "RECIST 1.1 size rule on PET: 'yes' only for a lesion whose long axis (short axis for a lymph node named "
    "as such by a reader) reaches 10 mm (15 mm) and spans at least twice the largest PET voxel dimension "
    "(three voxels edge to edge); RECIST measures on CT, these PET diameters are a research reference."
)


# Maximum value lengths of the string VRs that patient/study attributes copied from the source use.
MAX_LENGTH = {"SH": 16, "LO": 64, "CS": 16, "AE": 16, "ST": 1024, "PN": 64}


def conform_copied_attributes(dataset: Dataset) -> list[str]:
    """Truncate top-level values that arrived over-long from the source (e.g. a 18-character StudyID),
    so that our object is valid even when its source was not; returns the keywords changed."""
    changed = []
    for element in dataset:
        limit = MAX_LENGTH.get(element.VR)
        if limit is None or element.value is None or element.VM != 1:
            continue
        text = str(element.value)
        if len(text) > limit:
            element.value = text[:limit]
            changed.append(element.keyword)
    if changed:
        logger.warning("truncated over-long attributes copied from the source: %s", ", ".join(changed))
    return changed


def _seg_algorithm(identity: AlgorithmIdentity) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=identity.name,
        family=codes.DCM.ImageProcessing,
        version=identity.version,
        source=MANUFACTURER,
        parameters={"parameters_sha256": identity.parameters_sha256, "use": "research only"},
    )


def sr_algorithm(identity: AlgorithmIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=identity.name,
        version=identity.version,
        parameters=[f"sha256:{identity.parameters_sha256}", identity.parameters[:64]],
    )


def build_segmentation(
    source_images: Sequence[Dataset],
    lesions: Sequence[Lesion] | Sequence[CtLesion],
    identity: AlgorithmIdentity,
    content_description: str = "FDG-avid lesions; research use only",
    series_description: str = "immunode PET lesions (RESEARCH USE ONLY)",
) -> hd.seg.Segmentation:
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=lesion.number,
            segment_label=lesion.tracking_identifier,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_seg_algorithm(identity),
            tracking_uid=lesion.tracking_uid,
            tracking_id=lesion.tracking_identifier,
        )
        for lesion in lesions
    ]
    # A label array (segment numbers on non-overlapping lesions) instead of one mask per segment.
    pixel_array = label_volume(lesions, (len(source_images), int(source_images[0].Rows), int(source_images[0].Columns)))
    segmentation = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=identity.name,
        software_versions=__version__,
        device_serial_number="1",
        content_description=content_description,
        content_label="LESIONS",
        series_description=series_description,
    )
    conform_copied_attributes(segmentation)
    return segmentation


def referenced_segment(
    lesion: Lesion | CtLesion, segmentation: hd.seg.Segmentation, source_images: Sequence[Dataset]
) -> hd.sr.ReferencedSegment:
    # Built explicitly: highdicom's ReferencedSegment.from_segmentation fails on a single-segment SEG,
    # whose segment identification sits in the shared, not per-frame, functional groups.
    slices = lesion.offset[0] + np.flatnonzero(lesion.mask.any(axis=(1, 2)))
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(segmentation.SOPClassUID),
        sop_instance_uid=str(segmentation.SOPInstanceUID),
        segment_number=lesion.number,
        source_images=[hd.sr.SourceImageForSegmentation.from_source_image(source_images[i]) for i in slices],
    )


def model_algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    parameters = [f"sha256:{model.weights_sha256}"] + (["synthetic demonstration weights"] if model.synthetic else [])
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version, parameters=parameters)


def _patient_cytact_group(summary: CytActSummary, series_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = model_algorithm(summary.model)

    def value(number: float, derivation: hd.sr.CodedConcept) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=CYTACT, value=number, unit=UNIT_NONE, derivation=derivation, algorithm_id=algorithm
        )

    measurements = [
        value(summary.minimum, codes.SCT.Minimum),
        value(summary.mean, codes.SCT.Mean),
        value(summary.maximum, codes.SCT.Maximum),
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(CYTACT_GROUP, codes.SCT.Low if summary.low_group else codes.SCT.High),
    ]
    if summary.variance is not None:
        measurements.append(value(summary.variance, VARIANCE))
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                CYTACT_HETEROGENEITY, codes.SCT.High if summary.heterogeneous else codes.SCT.Low
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(prefix=None, entropy_srcs=["immunode-patient-cytact", series_uid]),
            identifier="Patient-level CytAct",
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def cytact_statement(result: PetQuantResult) -> str:
    summary = result.cytact
    if summary is None:
        return f"CytAct not computed: {result.cytact_not_computed or 'no lesion'}."
    text = (
        f"CytAct by {summary.model.name} {summary.model.version} (weights sha256:{summary.model.weights_sha256}): "
        f"minimum {summary.minimum:.3f} ({'low' if summary.low_group else 'high'} group, cut-off "
        f"{summary.low_group_cutoff}), mean {summary.mean:.3f}, maximum {summary.maximum:.3f}"
    )
    if summary.variance is not None:
        text += (
            f", variance {summary.variance:.3f} ({'high' if summary.heterogeneous else 'low'} heterogeneity, "
            f"cut-off {summary.heterogeneity_cutoff})"
        )
    text += ". Research reference, not a prediction of treatment response for this patient."
    if summary.model.synthetic:
        text += f" {SYNTHETIC_WEIGHTS}."
    return text


def _lipi_algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name="immunode-lipi", version=__version__, parameters=["Mezquita 2018", "dNLR > 3", "LDH > ULN"]
    )


def _response_group(
    response: ResponsePredictions, series_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """Patient-level response models: probabilities, fusion modality weights, dNLR and LIPI."""
    measurements, evaluations = [], []
    if response.expression_probability is not None and response.expression_model is not None:
        measurements.append(
            hd.sr.Measurement(
                name=RESPONSE_EXPRESSION,
                value=response.expression_probability,
                unit=UNIT_NONE,
                algorithm_id=model_algorithm(response.expression_model),
            )
        )
    if response.fusion_probability is not None and response.fusion_model is not None:
        fusion = model_algorithm(response.fusion_model)
        measurements.append(
            hd.sr.Measurement(
                name=RESPONSE_FUSION, value=response.fusion_probability, unit=UNIT_NONE, algorithm_id=fusion
            )
        )
        measurements += [
            hd.sr.Measurement(name=MODALITY_WEIGHTS[m], value=weight, unit=UNIT_NONE, algorithm_id=fusion)
            for m, weight in response.fusion_weights
        ]
    if response.dnlr is not None:
        measurements.append(
            hd.sr.Measurement(name=DNLR, value=response.dnlr, unit=UNIT_NONE, algorithm_id=_lipi_algorithm())
        )
    if response.lipi:
        evaluations.append(hd.sr.QualitativeEvaluation(LIPI, LIPI_VALUES[response.lipi]))
    if not measurements and not evaluations:
        return None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(prefix=None, entropy_srcs=["immunode-patient-response", series_uid]),
            identifier="Patient-level response models",
        ),
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
    )


def _identity_text(model: ModelIdentity) -> str:
    text = f"{model.name} {model.version} (weights sha256:{model.weights_sha256})"
    return text + (" [SYNTHETIC training data, no clinical meaning]" if model.synthetic else "")


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
            f"{response.fusion_probability:.3f}; modality weights {weights}{notes}. " + NOT_A_PREDICTION
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
    return statements


def _lesion_group(
    lesion: Lesion,
    segmentation: hd.seg.Segmentation,
    source_images: Sequence[Dataset],
    identity: AlgorithmIdentity,
    model: ModelIdentity | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    algorithm = sr_algorithm(identity)
    m = lesion.measurements

    def suv(value: float, derivation: hd.sr.CodedConcept) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=SUVBW, value=value, unit=UNIT_SUVBW, derivation=derivation, algorithm_id=algorithm
        )

    measurements = [
        suv(m.suv_max, codes.SCT.Maximum),
        suv(m.suv_mean, codes.SCT.Mean),
        suv(m.suv_peak, codes.DCM.PeakValueWithinROI),
        hd.sr.Measurement(
            name=codes.DCM.MetabolicVolume, value=m.metabolic_volume_ml, unit=UNIT_ML, algorithm_id=algorithm
        ),
        hd.sr.Measurement(
            name=codes.DCM.TotalLesionGlycolysis,
            value=m.total_lesion_glycolysis,
            unit=UNIT_GRAM,
            algorithm_id=algorithm,
        ),
    ]
    measurements += [
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=m.long_axis_mm, unit=UNIT_MM, algorithm_id=algorithm),
        hd.sr.Measurement(name=codes.SCT.ShortAxis, value=m.short_axis_mm, unit=UNIT_MM, algorithm_id=algorithm),
    ]
    if lesion.cytact is not None and model is not None:
        measurements.append(
            hd.sr.Measurement(name=CYTACT, value=lesion.cytact, unit=UNIT_NONE, algorithm_id=model_algorithm(model))
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_identifier),
        referenced_segment=referenced_segment(lesion, segmentation, source_images),
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        finding_sites=_finding_sites(lesion),
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(RECIST_TARGET, codes.SCT.Yes if m.recist_target else codes.SCT.No)
        ],
    )


def _finding_sites(lesion: Lesion) -> list[hd.sr.FindingSite] | None:
    sites = [hd.sr.FindingSite(LOCATIONS[lesion.location])] if lesion.location in LOCATIONS else []
    if lesion.measurements.lymph_node:
        sites.append(hd.sr.FindingSite(codes.SCT.LymphNode))
    return sites or None


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
        hd.sr.TextContentItem(
            name=COMMENT, value=RESEARCH_USE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        ),
        hd.sr.TextContentItem(
            name=COMMENT, value=summary[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        ),
    ] + [
        hd.sr.TextContentItem(name=COMMENT, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in statements
    ]
    return container


def build_measurement_report(
    source_images: Sequence[Dataset],
    segmentation: hd.seg.Segmentation | None,
    result: PetQuantResult,
    identity: AlgorithmIdentity,
    previous_report: Dataset | None,
    summary: str,
    notes: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    observation_context = hd.sr.ObservationContext(
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
    groups = (
        [
            _lesion_group(lesion, segmentation, source_images, identity, result.cytact.model if result.cytact else None)
            for lesion in result.lesions
        ]
        if segmentation
        else []
    )
    if groups and result.cytact is not None:
        groups.append(_patient_cytact_group(result.cytact, result.volume.series_instance_uid))
    response_group = _response_group(result.response, result.volume.series_instance_uid) if result.response else None
    if not groups:
        # TID 1500 needs a measurement group: with no avid lesion, one whole-study group says "Finding: None".
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(
                        prefix=None, entropy_srcs=["immunode-no-lesion", result.volume.series_instance_uid]
                    ),
                    identifier="FDG-avid lesions",
                ),
                finding_type=codes.SCT.Lesion,
                algorithm_id=sr_algorithm(identity),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NONE_FOUND)],
            )
        ]
    if response_group is not None:
        groups.append(response_group)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=PET_WHOLE_BODY,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(
        research_use_container(
            summary,
            [
                *result.detection_notes,
                *(
                    [f"Reader annotations not used as lesions: {'; '.join(result.annotations_left_out)}."]
                    if result.annotations_left_out
                    else []
                ),
                RECIST_ON_PET,
                cytact_statement(result),
                *response_statements(result.response),
                *source_statements(notes),
            ],
        )
    )
    evidence = list(source_images) + ([segmentation] if segmentation is not None else [])
    document = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        previous_versions=[previous_report] if previous_report is not None else None,
        series_description="immunode PET lesion report (RESEARCH USE ONLY)",
    )
    conform_copied_attributes(document)
    return document


def write_pet_report(
    result: PetQuantResult,
    identity: AlgorithmIdentity,
    summary: str,
    previous_report: Dataset | None,
    new_path: Callable[[], Path],
) -> Report:
    """Build, save and validate the SEG (if any lesion) and SR; an invalid object is deleted, never returned."""
    source_images = [pydicom.dcmread(path) for path in result.volume.source_paths]
    notes = conform_sources(source_images)
    written: list[Path] = []
    files: list[ReportFile] = []
    try:
        segmentation = None
        if result.lesions:
            segmentation = build_segmentation(source_images, result.lesions, identity)
            seg_path = new_path()
            segmentation.save_as(seg_path)
            written.append(seg_path)
            validate_segmentation(seg_path, len(result.lesions))
            files.append(
                ReportFile(
                    "SEG",
                    seg_path,
                    str(segmentation.SOPClassUID),
                    str(segmentation.SOPInstanceUID),
                    str(segmentation.SeriesInstanceUID),
                )
            )
        document = build_measurement_report(
            source_images, segmentation, result, identity, previous_report, summary, notes
        )
        sr_path = new_path()
        document.save_as(sr_path)
        written.append(sr_path)
        validate_report(sr_path, len(result.lesions))
        files.append(
            ReportFile(
                "SR", sr_path, str(document.SOPClassUID), str(document.SOPInstanceUID), str(document.SeriesInstanceUID)
            )
        )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return Report(files=tuple(files), summary=summary)
