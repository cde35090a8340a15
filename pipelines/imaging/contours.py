"""Readers' regions on an image grid: RTSTRUCT ROIs rasterised, DICOM SEG segments resampled, and the rule
that tells a lesion from an organ, the body outline or a planning volume. Shared by the PET semi-automatic
mode and the CT lesions of the longitudinal method."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath

from pipelines.imaging.geometry import index_to_patient, patient_to_index
from pipelines.imaging.settings import AnnotationSettings
from pipelines.types import AnnotationSource, ReaderRegion, ReaderSeed, VolumeGeometry

logger = logging.getLogger(__name__)

ANATOMICAL_STRUCTURE = "123037004"  # SCT: the SEG property category of organs, not lesions
LYMPH_NODE_CODE = "59441001"  # SCT Lymph node
# AAPM TG-263 target names begin with their kind: GTV (IGTV: internal gross tumour volume), CTV, ITV, PTV.
TARGET_NAME = re.compile(r"^(?P<kind>i?gtv|ctv|itv|ptv)", re.IGNORECASE)
PLANNING_TYPES = {"CTV", "PTV"}  # RT ROI Interpreted Types of planning volumes
# A contour named for the modality it was drawn on ("GTV_PET", "GTV_CT"), when the object does not say.
DRAWN_ON_NAME = {
    "PT": re.compile(r"(?i)(^|[^a-z])(pet|pt|suv)([^a-z]|$)"),
    "CT": re.compile(r"(?i)(^|[^a-z])ct([^a-z]|$)"),
}


@dataclass(frozen=True)
class LeftOut:
    """An annotated region that is not a lesion, and why."""

    label: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """Whether an annotated region is a lesion, read from its name (AAPM TG-263) and its type together."""

    lesion: bool
    reason: str = ""  # why not a lesion; for a lesion, why despite its type ("" when name and type agree)


def target_kind(label: str) -> str:
    """The TG-263 target kind a name begins with ("GTV", "CTV", "ITV", "PTV"; IGTV is a GTV), "" for none."""
    match = TARGET_NAME.match(label.strip())
    if not match:
        return ""
    kind = match.group("kind").upper()
    return "GTV" if kind == "IGTV" else kind


def classify(label: str, roi_type: str, settings: AnnotationSettings, anatomical: bool = False) -> Decision:
    """Is an annotated region a lesion? Its name (AAPM TG-263) and its RT ROI Interpreted Type (for a SEG segment:
    `anatomical`, its property category is Anatomical Structure) are read together:
    - a name that is a gross tumour volume (GTV..., IGTV...) is a lesion whatever the type (real exports type
      every ROI ORGAN): the target name wins, and the decision says so;
    - a name that is a planning volume (CTV, ITV, PTV...) or a planning type (CTV, PTV) is not a lesion unless
      `planning_volumes` lists it;
    - type GTV: a lesion, unless the name is an organ's or the body outline's and no lesion word ("Lung_L" typed
      GTV): the organ name wins;
    - another type listed in `non_lesion_roi_types`, or a SEG segment of category Anatomical Structure: not a lesion;
    - no type (or an unlisted one): a lesion name (`lesion_label`) is a lesion, an organ/outline/planning name
      (`non_lesion_label`) is not, anything else is a lesion."""
    roi_type = roi_type.strip().upper()
    typed = f"RT ROI Interpreted Type {roi_type}" if roi_type else ""
    typed = typed or ("SEG category Anatomical Structure" if anatomical else "")
    kind = target_kind(label)
    if kind == "GTV":
        if (roi_type and roi_type != "GTV") or anatomical:
            why = f"a lesion by its TG-263 name (gross tumour volume) although its {typed}: the target name wins"
            return Decision(True, why)
        return Decision(True)
    planning = kind or (roi_type if roi_type in PLANNING_TYPES else "")
    if planning:
        by = f"TG-263 name ({kind})" if kind else typed
        if planning in settings.planning_volumes:
            why = f"planning volume {planning} counted as a lesion (pipelines.annotations.planning_volumes)"
            return Decision(True, why)
        return Decision(False, f"planning volume by its {by}; not a lesion unless configured (planning_volumes)")
    organ_name = bool(re.search(settings.non_lesion_label, label)) and not re.search(settings.lesion_label, label)
    if roi_type == "GTV":
        if organ_name:
            why = "its name marks an organ or the body outline (TG-263), not a tumour: the name wins over RT ROI "
            return Decision(False, why + "Interpreted Type GTV")
        return Decision(True)
    if anatomical:
        return Decision(False, "SEG property category Anatomical Structure")
    if roi_type in settings.non_lesion_roi_types:
        return Decision(False, typed)
    if re.search(settings.lesion_label, label):
        return Decision(True)
    if organ_name:
        return Decision(False, "its name marks an organ, the body outline or a planning volume")
    return Decision(True)


def geometry_affine(geometry: VolumeGeometry) -> np.ndarray:
    """4x4 affine from [slice, row, column, 1] to patient mm."""
    affine = np.eye(4)
    origin = index_to_patient(geometry, np.zeros(3))
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        affine[:3, axis] = index_to_patient(geometry, unit) - origin
    affine[:3, 3] = origin
    return affine


def resample_mask(source: np.ndarray, index_to_xyz: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """A mask given on another grid (affine from [slice, row, column] to patient mm) sampled at the target
    voxel centres by nearest neighbour, only inside the region's bounding box; empty where the region lies
    outside the target's coverage."""
    found = np.argwhere(source)
    empty = np.zeros(geometry.shape, dtype=bool)
    if not len(found):
        return empty
    low, high = found.min(axis=0) - 1, found.max(axis=0) + 1
    corners = np.array(
        [[a, b, c, 1.0] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])]
    )
    target_corners = patient_to_index(geometry, (corners @ index_to_xyz.T)[:, :3])
    start = np.clip(np.floor(target_corners.min(axis=0)).astype(int), 0, None)
    stop = np.minimum(np.ceil(target_corners.max(axis=0)).astype(int) + 1, geometry.shape)
    if np.any(stop <= start):
        return empty  # the region lies outside the target's coverage (a PET reaching beyond the CT, say)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij"), axis=-1)
    xyz = index_to_patient(geometry, grid.reshape(-1, 3))
    inverse = np.linalg.inv(index_to_xyz)
    source_index = np.rint((np.column_stack([xyz, np.ones(len(xyz))]) @ inverse.T)[:, :3]).astype(int)
    valid = np.all((source_index >= 0) & (source_index < source.shape), axis=1)
    values = np.zeros(len(xyz), dtype=bool)
    values[valid] = source[tuple(source_index[valid].T)]
    empty[tuple(slice(a, b) for a, b in zip(start, stop))] = values.reshape(grid.shape[:3])
    return empty


def _referenced_series(ds: pydicom.Dataset) -> set[str]:
    """Series of the images an RTSTRUCT or SEG says it was drawn on."""
    series = {str(i.SeriesInstanceUID) for i in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in i}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for item in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in item:
                    series.add(str(item.SeriesInstanceUID))
    return series


@dataclass(frozen=True)
class _Grid:
    """The analysed grid: its geometry, frame of reference, series and modality (to tell which reader's region
    was drawn on it)."""

    geometry: VolumeGeometry
    frame_of_reference_uid: str
    series_instance_uid: str = ""
    modality: str = ""

    def drawn_on(self, ds: pydicom.Dataset, label: str) -> str:
        """The modality a region was drawn on: this grid's when the object references this series, else the
        modality its name states ("GTV_PET", "GTV_CT"), else "" (unknown)."""
        if self.series_instance_uid and self.series_instance_uid in _referenced_series(ds):
            return self.modality
        return next((modality for modality, name in DRAWN_ON_NAME.items() if name.search(label)), "")


def _source(
    ds: pydicom.Dataset, grid: _Grid, label: str, kind: str, roi_type: str, site: str, why: str
) -> AnnotationSource:
    return AnnotationSource(
        label=label,
        kind=kind,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        roi_type=roi_type.strip().upper(),
        finding_site=site,
        decision=why,
        drawn_on=grid.drawn_on(ds, label),
    )


def _rtstruct_regions(
    ds: pydicom.Dataset, grid: _Grid, settings: AnnotationSettings, left_out: list[LeftOut], points: list[ReaderSeed]
) -> list[ReaderRegion]:
    """Each lesion ROI's closed planar contours rasterised on the grid (even-odd rule: inner contours are
    holes; a voxel is inside when its centre is; each contour on the slice nearest to its plane). An ROI of
    POINT contours only marks a lesion: its centroid goes to `points`."""
    node_label = re.compile(settings.lymph_node_label)
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    types = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
        for o in ds.get("RTROIObservationsSequence", [])
        if "ReferencedROINumber" in o
    }
    geometry = grid.geometry
    shape = geometry.shape
    rows, columns = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    centres = np.column_stack([columns.ravel(), rows.ravel()])
    regions = []
    for roi_contour in ds.get("ROIContourSequence", []):
        roi = rois.get(int(roi_contour.ReferencedROINumber))
        if roi is None or str(roi.get("ReferencedFrameOfReferenceUID", "")) != grid.frame_of_reference_uid:
            continue
        name = str(roi.get("ROIName", f"ROI {roi.ROINumber}"))
        roi_type = types.get(int(roi.ROINumber), "")
        decision = classify(name, roi_type, settings)
        if not decision.lesion:
            left_out.append(LeftOut(name, decision.reason))
            continue
        contours = list(roi_contour.get("ContourSequence", []))
        marks = [c for c in contours if str(c.get("ContourGeometricType", "")) == "POINT"]
        if contours and len(marks) == len(contours):
            xyz = np.concatenate([np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in marks])
            points.append(ReaderSeed(tuple(float(v) for v in xyz.mean(axis=0)), bool(node_label.search(name)), name))
            continue
        mask = np.zeros(shape, dtype=bool)
        for contour in contours:
            xyz = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            index = patient_to_index(geometry, xyz)  # [slice, row, column]
            z = int(round(float(np.median(index[:, 0]))))
            if not 0 <= z < shape[0] or len(index) < 3:
                continue
            inside = PolygonPath(index[:, [2, 1]]).contains_points(centres).reshape(shape[1], shape[2])
            mask[z] ^= inside
        if mask.any():
            source = _source(ds, grid, name, "RTSTRUCT", roi_type, "", decision.reason)
            regions.append(ReaderRegion(name, mask, bool(node_label.search(name)), "RTSTRUCT", (source,)))
        else:
            logger.warning("RTSTRUCT %s: ROI %s covers no voxel of the grid; ignored", ds.SOPInstanceUID, name)
    return regions


def _code_meaning(items: object) -> str:
    return next((str(item.get("CodeMeaning", "")) for item in (items or [])), "")  # type: ignore[attr-defined]


def _seg_regions(path: Path, grid: _Grid, settings: AnnotationSettings, left_out: list[LeftOut]) -> list[ReaderRegion]:
    node_label = re.compile(settings.lymph_node_label)
    seg = hd.seg.segread(path)
    if str(seg.get("FrameOfReferenceUID", "")) != grid.frame_of_reference_uid:
        return []
    regions = []
    for description in seg.SegmentSequence:
        label = str(description.get("SegmentLabel", f"Segment {description.SegmentNumber}"))
        category = description.get("SegmentedPropertyCategoryCodeSequence") or []
        anatomical = any(str(c.CodeValue) == ANATOMICAL_STRUCTURE for c in category)
        decision = classify(label, "", settings, anatomical)
        if not decision.lesion:
            left_out.append(LeftOut(label, decision.reason))
            continue
        volume = seg.get_volume(segment_numbers=[description.SegmentNumber], combine_segments=True)
        mask = resample_mask(np.asarray(volume.array) > 0, np.asarray(volume.affine), grid.geometry)
        types = description.get("SegmentedPropertyTypeCodeSequence") or []
        node = any(str(t.CodeValue) == LYMPH_NODE_CODE for t in types) or bool(node_label.search(label))
        site = _code_meaning(description.get("AnatomicRegionSequence"))
        if mask.any():
            source = _source(seg, grid, label, "SEG", "", site, decision.reason)
            regions.append(ReaderRegion(label, mask, node, "SEG", (source,)))
    return regions


def overlap_fraction(first: np.ndarray, second: np.ndarray) -> float:
    """Shared voxels as a fraction of the smaller region (1 when one contains the other)."""
    smaller = min(int(first.sum()), int(second.sum()))
    return float((first & second).sum()) / smaller if smaller else 0.0


def merge_regions(regions: list[ReaderRegion], threshold: float, modality: str = "") -> list[ReaderRegion]:
    """One lesion per tumour: regions of *different* annotations (another object, or another ROI or segment
    of one object drawn on another modality) whose overlap on this grid reaches `threshold` of the smaller one are
    merged, transitively. The merged region's extent is the union of the members drawn on this grid's modality
    (`modality`: by the object's referenced series, else the modality its name states), or of all members when
    none is known to be; it names every member as a source, in the order found. Regions of one annotation object
    drawn on one modality are separate lesions a reader drew as such, whatever their overlap."""
    if len(regions) < 2:
        return regions
    parent = list(range(len(regions)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    overlaps: dict[tuple[int, int], float] = {}
    for i, first in enumerate(regions):
        for j in range(i + 1, len(regions)):
            second = regions[j]
            a = {(s.sop_instance_uid, s.drawn_on) for s in first.sources}
            b = {(s.sop_instance_uid, s.drawn_on) for s in second.sources}
            if a & b:
                continue  # one object's regions on one modality: the reader drew them apart
            value = overlap_fraction(first.mask, second.mask)
            if value >= threshold:
                overlaps[(i, j)] = value
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(regions)):
        groups.setdefault(root(i), []).append(i)
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(regions[members[0]])
            continue
        parts = [regions[i] for i in members]
        on_grid = [r for r in parts if modality and any(s.drawn_on == modality for s in r.sources)] or parts
        mask = np.zeros_like(parts[0].mask)
        for part in on_grid:
            mask |= part.mask
        labels = list(dict.fromkeys(r.label for r in on_grid + parts))
        pairs = [
            f"{regions[i].label} / {regions[j].label} {100 * v:.0f} %" for (i, j), v in overlaps.items() if i in members
        ]
        extent = ", ".join(dict.fromkeys(r.label for r in on_grid))
        note = (
            f"one tumour annotated {len(parts)} times ({'; '.join(pairs)} of the smaller region overlap, merged at "
            f"{100 * threshold:.0f} %); extent from {extent}"
            + (f" (drawn on {modality})" if on_grid is not parts else " (union: none known to be drawn on this grid)")
        )
        merged.append(
            ReaderRegion(
                " + ".join(labels),
                mask,
                any(r.lymph_node for r in parts),
                "+".join(dict.fromkeys(r.kind for r in parts)),
                tuple(s for r in on_grid + [r for r in parts if r not in on_grid] for s in r.sources),
                note,
            )
        )
        logger.info("reader regions %s merged into one lesion: %s", labels, note)
    return merged


@dataclass(frozen=True)
class Annotated:
    regions: tuple[ReaderRegion, ...]  # lesion regions on the grid, overlapping annotations of one tumour merged
    points: tuple[ReaderSeed, ...]  # lesions marked by a point only (RTSTRUCT POINT ROIs)
    left_out: tuple[LeftOut, ...]  # annotated regions that are not lesions, and unusable annotations


def annotated_regions(
    paths: list[Path] | tuple[Path, ...],
    geometry: VolumeGeometry,
    frame_of_reference_uid: str,
    settings: AnnotationSettings,
    series_instance_uid: str = "",
    modality: str = "",
) -> Annotated:
    """The lesion regions of every RTSTRUCT and SEG among `paths` in the frame of reference, on the grid of the
    series `series_instance_uid` of `modality` ("PT", "CT"), overlapping regions of one tumour merged
    (`merge_regions`); point marks; the annotated regions that are not lesions. An unreadable annotation is left
    out, saying why."""
    grid = _Grid(geometry, frame_of_reference_uid, series_instance_uid, modality)
    regions: list[ReaderRegion] = []
    left_out: list[LeftOut] = []
    points: list[ReaderSeed] = []
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class = str(header.SOPClassUID)
            if sop_class == pydicom.uid.RTStructureSetStorage:
                regions += _rtstruct_regions(pydicom.dcmread(path), grid, settings, left_out, points)
            elif sop_class == pydicom.uid.SegmentationStorage:
                regions += _seg_regions(Path(path), grid, settings, left_out)
        except Exception as error:  # a malformed annotation must not stop the analysis; the SR says it was not used
            reason = f"not usable: {error.__class__.__name__}: {error}"[:300]
            left_out.append(LeftOut(Path(path).name, reason))
    for item in left_out:
        logger.info("annotation %r is not a lesion (%s); left out", item.label, item.reason)
    merged = merge_regions(regions, settings.merge_overlap, modality)
    return Annotated(tuple(merged), tuple(points), tuple(left_out))
