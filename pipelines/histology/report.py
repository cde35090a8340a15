"""Report of a slide: the attention heatmap as a FRACTIONAL DICOM Segmentation on the total pixel matrix of
the slide's low-resolution (tissue) level, which pathology viewers overlay on the slide, and a TID 1500 SR with
the slide-level results and the patient's response models. Both through highdicom and the validation gate."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from common.states import OutputKind
from common.types import OutputFile
from common.version import __version__
from pipelines.histology.errors import SlideNotReadable
from pipelines.histology.pipeline import Histology
from pipelines.histology.types import SlideAnalysis
from pipelines.omics.report import response_results, response_statements
from pipelines.output.gate import OutputWriter
from pipelines.output.sources import conform_copied_attributes, conform_sources
from pipelines.output.sr import (
    UNIT_NONE,
    StudyResults,
    measurement,
    measurement_document,
    model_algorithm,
    model_statement,
    private_concept,
    source_statements,
    ucum,
)
from pipelines.types import AlgorithmIdentity

logger = logging.getLogger(__name__)

# The Series Numbers the pipeline declares (`Histology.writes`), as its first version's series take them.
SEG_SERIES_NUMBER = Histology.writes.seg_series_number
SR_SERIES_NUMBER = Histology.writes.sr_series_number
SEG_DESCRIPTION = "immunode attention heatmap (RESEARCH USE ONLY)"
SR_DESCRIPTION = "immunode histology report (RESEARCH USE ONLY)"
HISTOLOGY = private_concept("WSI_HISTOLOGY", "Whole-slide histology analysis")
MIL_PROBABILITY = private_concept("MIL_PROB", "ICI response probability, histology MIL (slide alone)")
PATCHES = private_concept("WSI_PATCHES", "Number of tissue patches analysed")
TISSUE_FRACTION = private_concept("WSI_TISSUE", "Tissue fraction of the slide")
PATCH_RESOLUTION = private_concept("WSI_MPP", "Resolution of the analysed patches")
UNIT_MICRON_PER_PIXEL = ucum("um/{pixel}", "micrometre per pixel")
UNIT_COUNT = ucum("{count}", "count")
SECTION_THICKNESS_MM = 0.004  # stated in the SR when a slide does not say
ENCODER_NOTE = (
    "The published method encodes patches with an ImageNet-pretrained ResNet-50; this encoder is a ResNet-50 whose "
    "weights were trained as its card states (self-supervised on this site's slides, or synthetic), not ImageNet."
)


def _tissue_source(result: SlideAnalysis) -> pydicom.Dataset:
    for path in result.source_paths:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        if str(header.SOPInstanceUID) == result.tissue_level.sop_instance_uid:
            return pydicom.dcmread(path)
    raise SlideNotReadable(f"the instance of level {result.tissue_level.index} is not among the series' files")


def conform_slide_source(source: pydicom.Dataset) -> list[str]:
    """Slide geometry highdicom needs and real files lack (type 1 in the WSI IOD): added to our read copy, and
    said in the SR. Without an origin the heatmap still aligns with the slide by its pixel matrix."""
    changes = []
    if "TotalPixelMatrixOriginSequence" not in source:
        origin = pydicom.Dataset()
        origin.XOffsetInSlideCoordinateSystem = 0.0
        origin.YOffsetInSlideCoordinateSystem = 0.0
        source.TotalPixelMatrixOriginSequence = [origin]
        changes.append("TotalPixelMatrixOriginSequence: missing, origin taken as (0, 0) mm")
    if "ImageOrientationSlide" not in source:
        source.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        changes.append("ImageOrientationSlide: missing, taken as the usual (0, -1, 0, -1, 0, 0)")
    for shared in source.get("SharedFunctionalGroupsSequence", []):
        for measures in shared.get("PixelMeasuresSequence", []):
            if "SliceThickness" not in measures:
                depth = source.get("ImagedVolumeDepth")  # micrometres
                measures.SliceThickness = float(depth) / 1000 if depth else SECTION_THICKNESS_MM
                changes.append(
                    f"SliceThickness: missing, {measures.SliceThickness} mm "
                    + ("from ImagedVolumeDepth" if depth else "assumed (a typical section)")
                )
    return changes


def build_heatmap(result: SlideAnalysis, source: pydicom.Dataset, identity: AlgorithmIdentity) -> hd.seg.Segmentation:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=identity.name,
        family=codes.DCM.ArtificialIntelligence,
        version=identity.version,
        source="immunode",
        parameters={"weights_sha256": identity.parameters_sha256, "use": "research only"},
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="MIL attention",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    rows, columns = int(source.TotalPixelMatrixRows), int(source.TotalPixelMatrixColumns)
    heat = np.zeros((1, rows, columns, 1), np.float32)
    heat[0, : result.heatmap.shape[0], : result.heatmap.shape[1], 0] = result.heatmap[:rows, :columns]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=heat,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="immunode",
        manufacturer_model_name=identity.name,
        software_versions=__version__,
        device_serial_number="1",
        content_description="MIL attention per patch, scaled to its maximum (research only)",
        content_label="ATTENTION",
        series_description=SEG_DESCRIPTION,
        tile_pixel_array=True,
        omit_empty_frames=True,
    )
    if "PatientOrientation" not in seg:  # General Image, type 2C: slide coordinates, no patient orientation
        seg.PatientOrientation = None
    conform_copied_attributes(seg)
    return seg


def _slide_results(result: SlideAnalysis) -> StudyResults:
    """The slide's results: of the whole slide, not of a region, so not a measurement group."""
    mil = model_algorithm(result.mil)
    return StudyResults(
        (
            measurement(MIL_PROBABILITY, result.probability, UNIT_NONE, mil),
            measurement(PATCHES, float(len(result.origins)), UNIT_COUNT, mil),
            measurement(TISSUE_FRACTION, result.tissue_fraction, UNIT_NONE, mil),
            measurement(PATCH_RESOLUTION, result.patch_level.microns_per_pixel, UNIT_MICRON_PER_PIXEL, mil),
        )
    )


def statements(result: SlideAnalysis, asked_mpp: float) -> list[str]:
    lines = [
        model_statement(result.encoder, "ResNet-50 patch encoder") + " " + ENCODER_NOTE,
        model_statement(result.mil, f"gated-attention MIL response probability {result.probability:.3f} (slide alone)"),
        f"Patches {result.patch_size} x {result.patch_size} pixels at {result.patch_level.microns_per_pixel:.3f} "
        f"um/pixel (pyramid level {result.patch_level.index}, the level nearest the method's {asked_mpp} um/pixel); "
        f"tissue detected at level {result.tissue_level.index} "
        f"({result.tissue_level.microns_per_pixel:.2f} um/pixel), {100 * result.tissue_fraction:.1f} % of the slide.",
        f"Stain normalisation: {result.stain}.",
    ]
    setting = "gpu_max_patches" if result.device.startswith("cuda") else "max_patches"
    if result.candidates > len(result.origins):
        lines.append(
            f"Subsampled: {len(result.origins)} of {result.candidates} tissue patches, evenly over the slide "
            f"(pipelines.histology.{setting}); encoded on {result.device}."
        )
    else:
        lines.append(f"Every tissue patch analysed ({result.candidates}); encoded on {result.device}.")
    return lines


def write_histology_report(
    result: SlideAnalysis, identity: AlgorithmIdentity, asked_mpp: float, new_path: Callable[[], Path]
) -> list[OutputFile]:
    source = _tissue_source(result)
    notes = conform_sources([source]) + conform_slide_source(source)
    heatmap = build_heatmap(result, source, identity)
    study = _slide_results(result)
    if result.response is not None:
        study += response_results(result.response)
    summary = (
        f"Whole-slide histology (research use only): {len(result.origins)} patches, tissue "
        f"{100 * result.tissue_fraction:.1f} %, MIL response probability {result.probability:.3f} (slide alone)."
    )
    lines = statements(result, asked_mpp) + response_statements(result.response) + source_statements(notes)
    report = measurement_document(
        [source], [heatmap], [], identity, HISTOLOGY, summary, lines, SR_SERIES_NUMBER, SR_DESCRIPTION,
        study_results=study,
    )
    with OutputWriter(new_path) as writer:
        outputs = [writer.save(heatmap, OutputKind.SEG, 1, result.series_instance_uid)]
        outputs.append(writer.save(report, OutputKind.SR, 0, result.series_instance_uid))
    logger.info("slide %s: heatmap SEG and SR written", result.series_instance_uid)
    return outputs
