"""RECIST 1.1 diameters measured on a lesion mask: the longest in-plane (axial) diameter over all slices
and the short axis perpendicular to it on that slice. Diameters run between the outer edges of the end
voxels (centre distance + one in-plane voxel), our documented choice. Target lesion: long axis >= 10 mm
or, for a lymph node, short axis >= 15 mm (RECIST 1.1). A lesion is a node when a reader labelled it one, or when
its organ (the CT anatomy's or the reader's finding site) names a lymph node (`nodal_site`): automatic nodes are
judged by their short axis too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

RECIST_MIN_LONG_AXIS_MM = 10.0
RECIST_MIN_NODE_SHORT_AXIS_MM = 15.0
NODAL_SITE = re.compile(r"(?i)\blymph|\bnod(e|es|al)\b")


def nodal_site(organ: str) -> bool:
    """Whether a lesion's organ or finding site names a lymph node ("lymph node", "mediastinal nodes", ...)."""
    return bool(NODAL_SITE.search(organ))


def meets_target_size(long_axis_mm: float, short_axis_mm: float, lymph_node: bool) -> bool:
    """RECIST 1.1 size rule of a target lesion: nodes by the short axis (>= 15 mm), others by the long axis."""
    return short_axis_mm >= RECIST_MIN_NODE_SHORT_AXIS_MM if lymph_node else long_axis_mm >= RECIST_MIN_LONG_AXIS_MM


@dataclass(frozen=True)
class Diameters:
    long_axis_mm: float
    short_axis_mm: float
    slice_index: int  # array slice of the lesion (0-based in the lesion's box) where the long axis lies
    target: bool


def _hull_points(points: np.ndarray) -> np.ndarray:
    if len(points) < 4:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # collinear points
        return points


def axial_diameters(
    mask: np.ndarray, row_spacing_mm: float, column_spacing_mm: float, lymph_node: bool = False
) -> Diameters:
    """mask: bool [slice, row, column] with axial slices. A lymph node is a target by its short axis."""
    voxel_mm = (row_spacing_mm + column_spacing_mm) / 2.0
    best = (0.0, 0.0, 0)
    for index in np.flatnonzero(mask.any(axis=(1, 2))):
        points = np.argwhere(mask[index]) * np.array([row_spacing_mm, column_spacing_mm])
        hull = _hull_points(points)
        distances = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
        i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
        long_axis = float(distances[i, j])
        if long_axis + voxel_mm <= best[0] and best[0] > 0:
            continue
        direction = (hull[j] - hull[i]) / long_axis if long_axis > 0 else np.array([1.0, 0.0])
        perpendicular = np.array([-direction[1], direction[0]])
        projection = points @ perpendicular
        # Never longer than the long axis (they are equal for a disc, up to rounding).
        short_axis = min(float(projection.max() - projection.min()), long_axis)
        candidate = (long_axis + voxel_mm, short_axis + voxel_mm, int(index))
        if candidate[0] > best[0]:
            best = candidate
    long_axis, short_axis, slice_index = best
    return Diameters(long_axis, short_axis, slice_index, meets_target_size(long_axis, short_axis, lymph_node))
