"""Report stage: a DICOM SEG (one segment per lesion) and a Comprehensive 3D SR holding the TID 1500
Measurement Report, both built with highdicom, placed in the source study, each in a new series.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from common.states import OutputKind, SegEncoding
from common.types import OutputFile, PreviousReport, ResultVersion
from pipelines.imaging.annotations import reader_source_statements
from pipelines.omics.report import response_results, response_statements
from pipelines.output.gate import OutputWriter
from pipelines.output.seg import Segmentations, lesion_groups, write_segmentations
from pipelines.output.sources import conform_sources
from pipelines.output.sr import (
    UNIT_ML,
    UNIT_MM,
    UNIT_NONE,
    StudyResults,
    measurement,
    measurement_document,
    model_algorithm,
    model_statement,
    private_concept,
    source_statements,
    sr_algorithm,
    ucum,
)
from pipelines.output.versions import (
    ReaderObserver,
    ReportVersion,
    SeriesNumbers,
    match_by_overlap,
    prior_lesions,
    report_version,
)
from pipelines.pet.pipeline import PetQuant
from pipelines.pet.types import CytActSummary, PetQuantResult
from pipelines.petlesions.types import Lesion
from pipelines.types import AlgorithmIdentity, ModelIdentity

logger = logging.getLogger(__name__)

# The Series Numbers the pipeline declares (`PetQuant.writes`), as its first version's series take them.
SEG_SERIES_NUMBER = PetQuant.writes.seg_series_number
SR_SERIES_NUMBER = PetQuant.writes.sr_series_number
SEG_DESCRIPTION = "immunode PET lesions (RESEARCH USE ONLY)"
SR_DESCRIPTION = "immunode PET lesion report (RESEARCH USE ONLY)"

AUTOMATIC = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
SEMIAUTOMATIC = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
# SUVbw (126401, DCM) with the derivation Maximum, Mean or Peak Value Within ROI: viewers show a measurement by
# its concept name alone (OHIF ignores the modifier), so each statistic has its own name; the modifier stays.
SUV_STATISTICS = {
    "max": (private_concept("SUVBW_MAX", "SUVmax"), codes.SCT.Maximum),
    "mean": (private_concept("SUVBW_MEAN", "SUVmean"), codes.SCT.Mean),
    "peak": (private_concept("SUVBW_PEAK", "SUVpeak"), codes.DCM.PeakValueWithinROI),
}
UNIT_SUVBW = ucum("{SUVbw}g/ml", "Standardized Uptake Value body weight")
UNIT_GRAM = ucum("g", "gram")
PET_WHOLE_BODY = hd.sr.CodedConcept("44139-4", "LN", "PET whole body")
NONE_FOUND = hd.sr.CodedConcept("260413007", "SCT", "None")
CYTACT = private_concept("CYTACT", "Cytolytic activity score (predicted)")
CYTACT_GROUP = private_concept("CYTACT_GROUP", "CytAct group (minimum vs cut-off)")
CYTACT_HETEROGENEITY = private_concept("CYTACT_HET", "CytAct heterogeneity (variance vs cut-off)")
VARIANCE = private_concept("VARIANCE", "Variance")
LOCATIONS = {
    "lung": codes.SCT.Lung,
    "thorax": codes.SCT.Thorax,
    "abdomen": codes.SCT.Abdomen,
    "pelvis": codes.SCT.Pelvis,
    "head and neck": codes.SCT.HeadAndNeck,
    "upper limb": codes.SCT.UpperLimb,
    "lower limb": codes.SCT.LowerLimb,
}
RECIST_TARGET = private_concept("RECIST_TARGET", "Meets RECIST 1.1 target lesion size rule")
CANDIDATE_RANK = private_concept("CAND_RANK", "Lesion candidate rank (1 = most confident)")
CANDIDATE_SCORE = private_concept("CAND_SCORE", "Lesion candidate confidence score")
LESION_STATUS = private_concept("LESION_STATUS", "Lesion confirmation status")
UNCONFIRMED = private_concept("UNCONFIRMED", "Automatic candidate, not confirmed by a reader")
READER_CONFIRMED = private_concept("READER_CONFIRMED", "Confirmed by a reader (reader's annotation)")
RECIST_ON_PET = (
    "RECIST 1.1 size rule on PET: 'yes' only for a lesion whose long axis (short axis for a lymph node: named "
    "so by a reader, or its organ a lymph node) reaches 10 mm (15 mm) and spans at least twice the largest PET "
    "voxel dimension (three voxels edge to edge); RECIST measures on CT, these PET diameters are a research reference."
)


def _patient_cytact(summary: CytActSummary) -> StudyResults:
    """The patient's CytAct over the lesions (minimum, mean, maximum, variance) and its groups."""
    algorithm = model_algorithm(summary.model)

    statistics = [
        (summary.minimum, codes.SCT.Minimum),
        (summary.mean, codes.SCT.Mean),
        (summary.maximum, codes.SCT.Maximum),
    ]
    if summary.variance is not None:
        statistics.append((summary.variance, VARIANCE))
    measurements = [measurement(CYTACT, value, UNIT_NONE, algorithm, derivation) for value, derivation in statistics]
    evaluations = []
    if summary.low_group is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(CYTACT_GROUP, codes.SCT.Low if summary.low_group else codes.SCT.High)
        )
    if summary.heterogeneous is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                CYTACT_HETEROGENEITY, codes.SCT.High if summary.heterogeneous else codes.SCT.Low
            )
        )
    return StudyResults(tuple(measurements), tuple(evaluations))


def cytact_statement(result: PetQuantResult) -> str:
    summary = result.cytact
    if summary is None:
        return f"CytAct not computed: {result.cytact_not_computed or 'no lesion'}."
    labels = {lesion.number: lesion.tracking_identifier for lesion in result.lesions}
    group = (
        f" ({'low' if summary.low_group else 'high'} group, cut-off {summary.low_group_cutoff})"
        if summary.low_group is not None
        else ""
    )
    what = (
        f"over {len(summary.lesions)} lesion(s) ({', '.join(labels.get(n, f'Lesion {n}') for n in summary.lesions)}; "
        f"{summary.selection}): minimum {summary.minimum:.3f}{group}, mean {summary.mean:.3f}, "
        f"maximum {summary.maximum:.3f}"
    )
    if summary.variance is not None:
        heterogeneity = (
            f" ({'high' if summary.heterogeneous else 'low'} heterogeneity, "
            f"the site's cut-off {summary.heterogeneity_cutoff}; the paper gives none, it splits a cohort at the "
            "median)"
            if summary.heterogeneous is not None
            else ""
        )
        what += f", variance {summary.variance:.3f}{heterogeneity}"
    if summary.groups_not_given:
        what += f"; {summary.groups_not_given}"
    return "CytAct by " + model_statement(summary.model, what)


def _lesion_groups(
    lesion: Lesion,
    segmentation: hd.seg.Segmentation,
    source_images: Sequence[Dataset],
    identity: AlgorithmIdentity,
    model: ModelIdentity | None,
    confirmed: bool = False,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    algorithm = sr_algorithm(identity)
    m = lesion.measurements

    def suv(value: float, statistic: str) -> hd.sr.Measurement:
        name, derivation = SUV_STATISTICS[statistic]
        return measurement(name, value, UNIT_SUVBW, algorithm, derivation)

    measurements = [
        suv(m.suv_max, "max"),
        suv(m.suv_mean, "mean"),
        suv(m.suv_peak, "peak"),
        measurement(codes.DCM.MetabolicVolume, m.metabolic_volume_ml, UNIT_ML, algorithm),
        measurement(codes.DCM.TotalLesionGlycolysis, m.total_lesion_glycolysis, UNIT_GRAM, algorithm),
    ]
    measurements += [
        measurement(codes.SCT.LongAxis, m.long_axis_mm, UNIT_MM, algorithm),
        measurement(codes.SCT.ShortAxis, m.short_axis_mm, UNIT_MM, algorithm),
    ]
    if lesion.cytact is not None and model is not None:
        measurements.append(measurement(CYTACT, lesion.cytact, UNIT_NONE, model_algorithm(model)))
    status, candidate_measurements = _confirmation(lesion, confirmed, algorithm)
    measurements += candidate_measurements
    return lesion_groups(
        lesion,
        segmentation,
        source_images,
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        finding_sites=_finding_sites(lesion),
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(RECIST_TARGET, codes.SCT.Yes if m.recist_target else codes.SCT.No),
            status,
        ],
    )


def _confirmation(
    lesion: Lesion, confirmed: bool, algorithm: hd.sr.AlgorithmIdentification
) -> tuple[hd.sr.QualitativeEvaluation, list[hd.sr.Measurement]]:
    """A lesion's status (reader-confirmed, or an automatic candidate with its rank and confidence score)."""
    if confirmed:
        return hd.sr.QualitativeEvaluation(LESION_STATUS, READER_CONFIRMED), []
    measurements = [measurement(CANDIDATE_RANK, lesion.number, UNIT_NONE, algorithm)]
    if lesion.candidate_score is not None:
        measurements.append(measurement(CANDIDATE_SCORE, lesion.candidate_score, UNIT_NONE, algorithm))
    return hd.sr.QualitativeEvaluation(LESION_STATUS, UNCONFIRMED), measurements


def _finding_sites(lesion: Lesion) -> list[hd.sr.FindingSite] | None:
    sites = [hd.sr.FindingSite(LOCATIONS[lesion.location])] if lesion.location in LOCATIONS else []
    if lesion.measurements.lymph_node:
        sites.append(hd.sr.FindingSite(codes.SCT.LymphNode))
    return sites or None


def build_measurement_report(
    source_images: Sequence[Dataset],
    segmentations: Segmentations | None,
    result: PetQuantResult,
    identity: AlgorithmIdentity,
    previous_report: Dataset | None,
    summary: str,
    notes: Sequence[str] = (),
    version: ReportVersion = ReportVersion(),
) -> hd.sr.Comprehensive3DSR:
    confirmed = result.reader_seeds > 0
    groups = (
        [
            group
            for lesion in result.lesions
            for group in _lesion_groups(
                lesion, segmentations.referenced, source_images, identity, result.cytact_model, confirmed
            )
        ]
        if segmentations
        else []
    )
    study = StudyResults()
    if groups and result.cytact is not None:
        study += _patient_cytact(result.cytact)
    if not groups:  # no FDG-avid lesion: said as the study's finding
        study += StudyResults(evaluations=(hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NONE_FOUND),))
    if result.response:
        study += response_results(result.response)
    statements = [
        *version.statements,
        *result.detection_notes,
        *(
            [f"Reader annotations not used as lesions: {'; '.join(result.annotations_left_out)}."]
            if result.annotations_left_out
            else []
        ),
        *reader_source_statements(result.lesions),  # issue 18: merged reader annotations, named
        RECIST_ON_PET,
        cytact_statement(result),
        *response_statements(result.response),
        *source_statements(notes),
    ]
    return measurement_document(
        source_images,
        segmentations.written if segmentations is not None else [],
        groups,
        identity,
        PET_WHOLE_BODY,
        summary,
        statements,
        version.sr_series_number or SR_SERIES_NUMBER,
        SR_DESCRIPTION,
        previous_report,
        version.reader,
        study,
    )


def write_pet_report(
    result: PetQuantResult,
    identity: AlgorithmIdentity,
    summary: str,
    previous_report: Dataset | None,
    new_path: Callable[[], Path],
    version: ReportVersion = ReportVersion(),
    seg_encodings: Sequence[SegEncoding] = (SegEncoding.FRACTIONAL,),
) -> tuple[OutputFile, ...]:
    """The SEG in each encoding asked for (if any lesion) and the SR through the validation gate; an invalid
    object is deleted, never returned. `version`: the version's statements, reader and Series Numbers."""
    source_images = [pydicom.dcmread(path) for path in result.volume.source_paths]
    notes = conform_sources(source_images)
    series_uid = result.volume.series_instance_uid
    supersedes = str(previous_report.SOPInstanceUID) if previous_report is not None else ""
    files: list[OutputFile] = []
    with OutputWriter(new_path) as writer:
        segmentations = None
        if result.lesions:
            segmentations = write_segmentations(
                writer,
                source_images,
                result.lesions,
                identity,
                "FDG-avid lesions; research use only"
                if result.reader_seeds
                else "FDG-avid lesion candidates (unconfirmed); research use only",
                SEG_DESCRIPTION,
                version.seg_series_number or SEG_SERIES_NUMBER,
                seg_encodings,
                series_uid,
                SEMIAUTOMATIC if result.reader_seeds else AUTOMATIC,
            )
            files += segmentations.files
        document = build_measurement_report(
            source_images, segmentations, result, identity, previous_report, summary, notes, version
        )
        files.append(writer.save(document, OutputKind.SR, len(result.lesions), series_uid, supersedes))
    return tuple(files)


def versioned(
    result: PetQuantResult,
    previous: PreviousReport | None,
    version: ResultVersion,
    readers: Sequence[ReaderObserver],
    numbers: SeriesNumbers,
) -> tuple[PetQuantResult, ReportVersion]:
    """The result as this version reports it: lesions that overlap one of the previous version's SEG keep its
    tracking UID; the version's statements (which, why, what it supersedes, what persists, who confirmed the
    lesions when a reader's annotations defined them) and its new Series Numbers."""
    segmentation = previous.segmentation_path if previous is not None else None
    prior = (
        prior_lesions(segmentation, result.volume.sop_instance_uids)
        if segmentation is not None and segmentation.exists()
        else ()
    )
    matches = match_by_overlap(result.lesions, prior)
    carried = {m.number: m.prior.tracking_uid for m in matches if m.prior.tracking_uid}
    lesions = tuple(
        dataclasses.replace(lesion, tracking_uid=carried.get(lesion.number, lesion.tracking_uid))
        for lesion in result.lesions
    )
    return dataclasses.replace(result, lesions=lesions), report_version(
        version,
        previous.sop_instance_uid if previous is not None else "",
        numbers,
        SEG_SERIES_NUMBER if lesions else None,
        SR_SERIES_NUMBER,
        tuple(r for r in readers if r.annotates(result.volume.frame_of_reference_uid)) if result.reader_seeds else (),
        matches,
        prior,
        {lesion.number: lesion.tracking_identifier for lesion in lesions},
    )
