"""Values of the PET lesion method: the SUV volume, lesions and their measurements."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.types import AnnotationSource, SegmentedLesion, VolumeGeometry


class SuvType(enum.Enum):
    BW = "SUVbw"  # body weight; stored SUVlbm/SUVibw/SUVbsa are converted to it


@dataclass(frozen=True)
class SuvConversion:
    """How stored values were turned into SUV, for the record and the report."""

    suv_type: SuvType
    units: str
    method: str  # human-readable account of the rule applied
    decay_correction: str
    injected_dose_bq: float | None
    decay_time_s: float | None
    half_life_s: float | None
    patient_weight_kg: float | None


@dataclass(frozen=True, eq=False)
class PetVolume:
    """A PET series as an SUV volume plus the instance order used to build it."""

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]  # one per slice, in array order
    source_paths: tuple[Path, ...]  # same order
    geometry: VolumeGeometry
    suv: np.ndarray  # float32 [slice, row, column]
    conversion: SuvConversion


@dataclass(frozen=True)
class LesionMeasurements:
    suv_max: float
    suv_mean: float
    suv_peak: float
    metabolic_volume_ml: float
    total_lesion_glycolysis: float  # SUVmean × MTV, in g (SUVbw) units
    voxel_count: int
    threshold_suv: float  # T = β·I70 + I_background
    i70_suv: float
    background_suv: float
    centroid_mm: tuple[float, float, float]
    long_axis_mm: float  # RECIST 1.1 in-plane diameters measured on the mask
    short_axis_mm: float
    recist_target: bool  # meets the RECIST 1.1 size rule for a target lesion (nodes: short axis >= 15 mm)
    lymph_node: bool = False  # a reader labelled the lesion a lymph node


@dataclass(frozen=True, eq=False)
class Lesion(SegmentedLesion):
    """A PET lesion: its segment on the PET grid and its measurements; the PET pipeline adds its CytAct, site and
    organ."""

    measurements: LesionMeasurements
    cytact: float | None = None  # predicted cytolytic activity score, when the model ran
    embedding: tuple[float, ...] | None = None  # the CytAct network's lesion embedding, when the model ran
    # Anatomical site from the CT, only where the CT shows the evidence (pipelines.petlesions.anatomy).
    location: str = ""
    location_evidence: str = ""  # what on the CT supports the site, or why no site is given
    # RECIST organ ("lung", "lymph node", "bone", ...; "" unknown): the reader's finding site or name, else the CT.
    organ: str = ""
    organ_evidence: str = ""  # where the organ comes from
    # Automatic detection: the ranked confidence that the candidate is a lesion (0-1, pipelines.petlesions.candidates).
    candidate_score: float | None = None
    # Semi-automatic mode: the readers' annotated regions that define the lesion (several when one tumour was
    # annotated more than once and the regions were merged), and how they were merged.
    sources: tuple[AnnotationSource, ...] = ()
    merge_note: str = ""
