"""Report stage of the longitudinal CT method: a DICOM SEG on the CT (one segment per lesion, the lesion's
persistent tracking UID) and a TID 1500 Measurement Report with the time point (T0 baseline or T1
follow-up), per-lesion diameters, volumes and their Δ, RECIST 1.1 figures, the resistance pattern, the
published Δ-radiomics features with the nearer published group median (research wording), the optional
classifier's class, and a reference to the baseline study and its SR. Built with highdicom, validated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from common.states import OutputKind, SegEncoding
from common.types import OutputFile
from pipelines.ct.pipeline import CtRadiomics
from pipelines.ct.types import CtLesion, CtRadiomicsResult, LesionChange, Resistance
from pipelines.imaging.annotations import reader_source_statements
from pipelines.output import sr
from pipelines.output.gate import OutputWriter
from pipelines.output.seg import lesion_groups, write_segmentations
from pipelines.output.sources import conform_sources
from pipelines.output.versions import ReportVersion
from pipelines.types import AlgorithmIdentity

# The Series Numbers the pipeline declares (`CtRadiomics.writes`), as its first version's series take them.
SEG_SERIES_NUMBER = CtRadiomics.writes.seg_series_number
SR_SERIES_NUMBER = CtRadiomics.writes.sr_series_number
CT_PROCEDURE = hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region")
UNIT_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
UNIT_LESIONS = hd.sr.CodedConcept("{lesions}", "UCUM", "lesions")
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")


LESION_ROLE = sr.private_concept("LESION_ROLE", "Lesion role in the delta-radiomics method")
ROLES = {
    "primary": sr.private_concept("PRIMARY", "Primary tumour"),
    "metastasis": sr.private_concept("METASTASIS", "Metastasis"),
}
TRACKING_STATUS = sr.private_concept("TRACK_STATUS", "Lesion tracking status since baseline")
STATUSES = {
    "matched": sr.private_concept("MATCHED", "Matched to a baseline lesion"),
    "new": sr.private_concept("NEW", "New since baseline"),
    "baseline": sr.private_concept("BASELINE", "Baseline lesion"),
}
PROGRESSIVE = sr.private_concept("PROGRESSIVE", "Progressive lesion (RECIST diameter growth rule)")
DELTA_DIAMETER = sr.private_concept("DELTA_DIAM", "Relative change of RECIST diameter since baseline")
DELTA_VOLUME = sr.private_concept("DELTA_VOL", "Relative change of volume since baseline")
SUM_T0 = sr.private_concept("SUMD_T0", "RECIST 1.1 sum of diameters at baseline")
SUM_T1 = sr.private_concept("SUMD_T1", "RECIST 1.1 sum of diameters at follow-up")
PERCENT_CHANGE = sr.private_concept("SUMD_PCT", "RECIST 1.1 percent change of the sum of diameters")
NEW_LESIONS = sr.private_concept("NEW_LESIONS", "Number of new lesions")
PROGRESSIVE_LESIONS = sr.private_concept("PROG_LESIONS", "Number of progressive lesions")
RECIST_RESPONSE = sr.private_concept("RECIST_RESP", "RECIST 1.1 response category (from masks)")
BEST_RESPONSE = sr.private_concept("RECIST_BEST", "RECIST 1.1 best response so far (from masks)")
NADIR = sr.private_concept("SUMD_NADIR", "RECIST 1.1 nadir of the sum of diameters")
WEEKS = sr.private_concept("WEEKS_T0", "Weeks since the baseline")
UNIT_WEEKS = sr.ucum("wk", "week")
RESISTANCE = sr.private_concept("RESISTANCE", "Resistance at this assessment (delta-radiomics method)")
RESISTANCES = {
    Resistance.NONE: sr.private_concept("RES_NONE", "No progression"),
    Resistance.PRIMARY: sr.private_concept("RES_PRIMARY", "Progression without prior response or lasting SD"),
    Resistance.ACQUIRED: sr.private_concept("RES_ACQUIRED", "Acquired resistance (progression after response)"),
}
RECIST_CATEGORIES = {
    category: sr.private_concept(f"RECIST_{category}", meaning)
    for category, meaning in zip(
        ("CR", "PR", "SD", "PD"), ("Complete response", "Partial response", "Stable disease", "Progressive disease")
    )
}
AR_PATTERN = sr.private_concept("AR_PATTERN", "Pattern of acquired resistance")
PATTERN_MEANINGS = {
    "oligo": "Oligo-progression (<= 3 new or progressive lesions)",
    "systemic": "Systemic progression (> 3 new or progressive lesions)",
}
PATTERNS = {
    pattern: sr.private_concept(f"AR_{pattern.upper()}", meaning) for pattern, meaning in PATTERN_MEANINGS.items()
}
AR_SIGNATURE_CLASS = sr.private_concept("AR_SIG_CLASS", "Delta-radiomics classifier class")
AR_SIGNATURE_PROBABILITY = sr.private_concept(
    "AR_SIG_PSYS", "Delta-radiomics classifier probability of systemic pattern"
)


def delta_feature_concept(name: str) -> hd.sr.CodedConcept:
    """A stable private code per feature (SH code values hold 16 characters; the name goes in the meaning)."""
    return sr.private_concept("DR" + hashlib.sha1(name.encode()).hexdigest()[:12].upper(), f"delta {name}"[:64])


def _time_point(result: CtRadiomicsResult) -> hd.sr.TimePointContext:
    if result.recist is not None:
        k = result.recist.assessment
        name = "T1 first assessment" if k == 1 else f"T{k} assessment"
        return hd.sr.TimePointContext(name, time_point_order=k + 1, subject_time_point_identifier=f"T{k}")
    if result.time_point == "T0":
        return hd.sr.TimePointContext("T0 baseline", time_point_order=1, subject_time_point_identifier="T0")
    return hd.sr.TimePointContext("Follow-up without analysed baseline")


def _lesion_groups(
    lesion: CtLesion,
    change: LesionChange | None,
    segmentation: hd.seg.Segmentation,
    source_images: list[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    time_point: hd.sr.TimePointContext,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    def mm(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
        return sr.measurement(name, value, sr.UNIT_MM, algorithm)

    measurements = [
        mm(codes.SCT.LongAxis, lesion.long_axis_mm),
        mm(codes.SCT.ShortAxis, lesion.short_axis_mm),
        sr.measurement(VOLUME, lesion.volume_ml, sr.UNIT_ML, algorithm),
    ]
    for concept, value in (
        (DELTA_DIAMETER, change.diameter_delta if change else None),
        (DELTA_VOLUME, change.volume_delta if change else None),
    ):
        if value is not None:
            measurements.append(sr.measurement(concept, value, sr.UNIT_NONE, algorithm))
    status = change.status if change else "baseline"
    evaluations = [
        hd.sr.QualitativeEvaluation(LESION_ROLE, ROLES[lesion.role.value]),
        hd.sr.QualitativeEvaluation(TRACKING_STATUS, STATUSES[status]),
    ]
    if change is not None and status == "matched":
        evaluations.append(
            hd.sr.QualitativeEvaluation(PROGRESSIVE, codes.SCT.Yes if change.progressive else codes.SCT.No)
        )
    return lesion_groups(
        lesion,
        segmentation,
        source_images,
        finding_type=codes.SCT.Lesion,
        time_point_context=time_point,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.LymphNode)] if lesion.lymph_node else None,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _patient_results(result: CtRadiomicsResult, algorithm: hd.sr.AlgorithmIdentification) -> sr.StudyResults:
    """RECIST, resistance and delta-radiomics results of the assessment: of the patient, not of one lesion."""
    measurements, evaluations = [], []
    r = result.recist
    if r is not None:
        measurements += [
            sr.measurement(SUM_T0, r.sum_t0_mm, sr.UNIT_MM, algorithm),
            sr.measurement(SUM_T1, r.sum_t1_mm, sr.UNIT_MM, algorithm),
            sr.measurement(NEW_LESIONS, r.new_lesions, UNIT_LESIONS, algorithm),
            sr.measurement(PROGRESSIVE_LESIONS, r.progressive_lesions, UNIT_LESIONS, algorithm),
        ]
        measurements.append(sr.measurement(NADIR, r.nadir_mm, sr.UNIT_MM, algorithm))
        if r.percent_change is not None:
            measurements.append(sr.measurement(PERCENT_CHANGE, r.percent_change, UNIT_PERCENT, algorithm))
        if r.weeks is not None:
            measurements.append(sr.measurement(WEEKS, r.weeks, UNIT_WEEKS, algorithm))
        evaluations += [
            hd.sr.QualitativeEvaluation(RECIST_RESPONSE, RECIST_CATEGORIES[r.category]),
            hd.sr.QualitativeEvaluation(BEST_RESPONSE, RECIST_CATEGORIES[r.best_response]),
            hd.sr.QualitativeEvaluation(RESISTANCE, RESISTANCES[r.resistance]),
        ]
        if r.pattern:
            evaluations.append(hd.sr.QualitativeEvaluation(AR_PATTERN, PATTERNS[r.pattern]))
    measurements += [
        sr.measurement(delta_feature_concept(f.name), f.delta, sr.UNIT_NONE, algorithm)
        for f in result.signature_features
        if f.delta is not None
    ]
    signature = result.signature_class
    if signature is not None:
        model = sr.model_algorithm(signature.model)
        evaluations.append(hd.sr.QualitativeEvaluation(AR_SIGNATURE_CLASS, PATTERNS[signature.label]))
        measurements.append(
            sr.measurement(AR_SIGNATURE_PROBABILITY, signature.probability_systemic, sr.UNIT_NONE, model)
        )
    return sr.StudyResults(tuple(measurements), tuple(evaluations))


def statements(result: CtRadiomicsResult) -> list[str]:
    lines = [f"Pairing: {result.pairing_reason}", f"Lesions: {result.lesion_source}; {result.primary_reason}."]
    lines += reader_source_statements(result.lesions)  # issue 18: merged reader annotations, named
    baseline = result.baseline
    if baseline is not None:
        lines.append(
            f"Baseline (T0): study {baseline.study_instance_uid} of {baseline.study_date or 'unknown date'}"
            + (f", report SR {baseline.report_sop_instance_uid}" if baseline.report_sop_instance_uid else "")
            + "."
        )
    r = result.recist
    if r is not None:
        low, high = result.t1_window_weeks
        if r.assessment == 1 and r.weeks is not None and not low <= r.weeks <= high:
            lines.append(
                f"T1 is {r.weeks:.1f} weeks after the baseline, outside the method's {low:g}-{high:g} weeks: "
                "delta features are not those of the published time points."
            )
        if r.assessment > 1:
            earlier = ", ".join(f"T{a.number} {a.category or 'not assessed'}" for a in baseline.assessments)
            lines.append(f"Assessment T{r.assessment} of the same baseline; earlier: {earlier}.")
        lines.append(
            "Acquired resistance as the method defines it: progression after a response (CR/PR) or after stable "
            f"disease lasting {result.stable_disease_min_weeks:g} weeks, its pattern counted at that progression; "
            + {
                Resistance.NONE: "no progression at this assessment.",
                Resistance.PRIMARY: "this progression follows neither, so it is not acquired resistance.",
                Resistance.ACQUIRED: f"this is acquired resistance, {r.pattern} "
                f"({r.new_lesions} new + {r.progressive_lesions} lesions progressive since their nadir).",
            }[r.resistance]
        )
    if result.registration:
        lines.append(f"Registration of the follow-up to T0: {result.registration}.")
    for change in result.changes:
        if change.status == "disappeared":
            lines.append(f"{change.tracking_identifier} ({change.tracking_uid}): not found at follow-up.")
    if result.signature_features:
        for f in result.signature_features:
            if f.delta is None:
                lines.append(f"delta {f.name}: not defined ({f.not_defined}).")
                continue
            lines.append(
                f"delta {f.name} = {f.delta:.4g}; published group medians: oligo-progression {f.oligo_median:g}, "
                f"systemic progression {f.systemic_median:g}"
                + (f" (AUC {f.auc:g})" if f.auc is not None else "")
                + f"; nearer to the {f.nearer} median"
                + ("" if f.nearer != "equidistant" else " (equidistant)")
                + ". Research reference, not a diagnosis (the medians are of patients who developed acquired "
                "resistance)."
            )
    elif result.signature_not_reported:
        lines.append(f"Delta-radiomics signature not reported: {result.signature_not_reported}.")
    signature = result.signature_class
    if signature is not None:
        lines.append(
            "Delta-radiomics classifier "
            + sr.model_statement(
                signature.model,
                f"class {signature.label} (probability of systemic pattern {signature.probability_systemic:.3f})",
            )
        )
    else:
        lines.append(f"Delta-radiomics classifier: {result.signature_class_not_given}.")
    return lines


def build_ct_report(
    source_images: list[Dataset],
    segmentations: Sequence[hd.seg.Segmentation],
    result: CtRadiomicsResult,
    identity: AlgorithmIdentity,
    summary: str,
    notes: Sequence[str] = (),
    previous_report: Dataset | None = None,
    version: ReportVersion = ReportVersion(),
) -> hd.sr.Comprehensive3DSR:
    """`segmentations`: the lesions' SEG in each encoding written; the groups reference the first."""
    algorithm = sr.sr_algorithm(identity)
    time_point = _time_point(result)
    changes = {c.tracking_uid: c for c in result.changes}
    groups = [
        group
        for lesion in result.lesions
        for group in _lesion_groups(
            lesion, changes.get(lesion.tracking_uid), segmentations[0], source_images, algorithm, time_point
        )
    ]
    evidence = list(segmentations)
    baseline = result.baseline
    if baseline is not None and baseline.report_path is not None and baseline.report_path.exists():
        # The baseline SR (another study) is listed in the Pertinent Other Evidence Sequence.
        evidence.append(pydicom.dcmread(baseline.report_path, stop_before_pixels=True))
    return sr.measurement_document(
        source_images,
        evidence,
        groups,
        identity,
        CT_PROCEDURE,
        summary,
        [*version.statements, *statements(result), *sr.source_statements(notes)],
        version.sr_series_number or SR_SERIES_NUMBER,
        f"immunode CT delta-radiomics {result.time_point} ({sr.RESEARCH_USE[:17]})",
        previous_report,
        version.reader,
        study_results=_patient_results(result, algorithm),
    )


def write_ct_report(
    result: CtRadiomicsResult,
    identity: AlgorithmIdentity,
    summary: str,
    new_path: Callable[[], Path],
    previous_report: Dataset | None = None,
    version: ReportVersion = ReportVersion(),
    seg_encodings: Sequence[SegEncoding] = (SegEncoding.FRACTIONAL,),
) -> tuple[OutputFile, ...]:
    """The SEG in each encoding asked for and the SR through the validation gate; an invalid object is deleted,
    never returned. A new version supersedes `previous_report` (the study's previous SR of this CT series) in new
    series (`version`)."""
    source_images = [pydicom.dcmread(path) for path in result.ct_paths]
    notes = conform_sources(source_images)
    with OutputWriter(new_path) as writer:
        segmentations = write_segmentations(
            writer,
            source_images,
            result.lesions,
            identity,
            "CT lesions; research use only",
            "immunode CT lesions (RESEARCH USE ONLY)",
            version.seg_series_number or SEG_SERIES_NUMBER,
            seg_encodings,
            result.ct_series_uid,
        )
        document = build_ct_report(
            source_images, segmentations.written, result, identity, summary, notes, previous_report, version
        )
        supersedes = str(previous_report.SOPInstanceUID) if previous_report is not None else ""
        sr = writer.save(document, OutputKind.SR, len(result.lesions), result.ct_series_uid, supersedes)
    return (*segmentations.files, sr)
