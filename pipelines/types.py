"""Values every pipeline shares: image grids, readers' marks and regions, the identity of an algorithm or a
trained model as results name them. Each pipeline's own values are in its package's `types.py`; what
crosses to the store is in `common.types`. Raw pydicom datasets appear only at the DICOM edges.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from common.version import __version__


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a volume stored as array[slice, row, column]."""

    origin_mm: tuple[float, float, float]  # patient position of voxel (0, 0, 0)
    spacing_mm: tuple[float, float, float]  # (column, row, slice) spacing, i.e. x, y, z of the grid
    row_direction: tuple[float, float, float]  # direction of increasing column index
    column_direction: tuple[float, float, float]  # direction of increasing row index
    slice_direction: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0


@dataclass(frozen=True)
class ReaderSeed:
    """A reader's mark of one lesion (semi-automatic mode), in patient coordinates (mm)."""

    position_mm: tuple[float, float, float]
    lymph_node: bool = False  # the reader labelled it a lymph node (RECIST node rule applies)
    site_text: str = ""  # the reader's words for where it is (a TID 1500 Finding Site, a POINT ROI's name)


@dataclass(frozen=True)
class AnnotationSource:
    """One reader's annotated region behind a lesion (an RTSTRUCT ROI, a SEG segment): its name, the object it
    came from, and how its name and type were read (`pipelines.imaging.contours.classify`)."""

    label: str
    kind: str  # "RTSTRUCT" or "SEG"
    sop_instance_uid: str  # of the annotation object
    series_instance_uid: str = ""  # of the annotation object
    roi_type: str = ""  # RT ROI Interpreted Type as stored ("" for a SEG segment or an untyped ROI)
    finding_site: str = ""  # the reader's anatomic region (SEG Anatomic Region Sequence), when given
    decision: str = ""  # why it is a lesion when its name and its type disagree ("" when they agree)
    drawn_on: str = ""  # the modality it was drawn on, when known ("PT", "CT")

    def describe(self) -> str:
        """How a report names it: label, object, and the decision when there was one."""
        text = f"{self.label} ({self.kind} {self.sop_instance_uid})"
        return text + (f" [{self.decision}]" if self.decision else "")


@dataclass(frozen=True, eq=False)
class ReaderRegion:
    """A reader's lesion region on an image grid: a bool mask of the grid's shape, and the annotated regions it
    stands for (one, or several readers' regions of one tumour merged, `pipelines.imaging.contours.merge_regions`)."""

    label: str
    mask: np.ndarray = field(repr=False)
    lymph_node: bool = False
    kind: str = ""  # "RTSTRUCT" or "SEG" ("RTSTRUCT+SEG" for merged regions of both kinds)
    sources: tuple[AnnotationSource, ...] = ()
    merge_note: str = ""  # how overlapping regions were merged into this one, when they were

    @property
    def site_text(self) -> str:
        """The reader's words for where it is: a SEG Anatomic Region, else the labels."""
        return next((source.finding_site for source in self.sources if source.finding_site), "") or " ".join(
            source.label for source in self.sources
        ) or self.label


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    weights_sha256: str
    synthetic: bool  # trained on synthetic demonstration data only

    @property
    def key(self) -> str:
        """How results name the model in the index (and the fusion model names its imaging source)."""
        return f"{self.name} {self.version} sha256:{self.weights_sha256[:16]}"


@dataclass(frozen=True)
class AlgorithmIdentity:
    name: str
    version: str
    # sha256 of the weights that produced the result; for a weight-free algorithm, of its parameters.
    parameters_sha256: str
    parameters: str

    @classmethod
    def of(cls, name: str, parameters: Mapping[str, object]) -> AlgorithmIdentity:
        """A weight-free algorithm of this product's version, identified by the hash of its parameters (JSON)."""
        text = json.dumps(parameters, sort_keys=True)
        return cls(name, __version__, hashlib.sha256(text.encode()).hexdigest(), text)


@dataclass(frozen=True, eq=False)
class SegmentedLesion:
    """A lesion as a SEG segment holds it: its number (1-based, the segment number), tracking identity, and its
    voxels as a bool mask of its bounding box, which starts at `offset` (slice, row, column) of the source
    volume (whole-volume masks of many lesions would cost gigabytes)."""

    number: int
    tracking_identifier: str
    tracking_uid: str
    offset: tuple[int, int, int]
    mask: np.ndarray = field(repr=False)

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape))  # type: ignore[return-value]
