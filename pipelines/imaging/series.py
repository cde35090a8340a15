"""A series of single-frame images read as one volume: headers read, slices ordered by their position along the
slice normal (never by InstanceNumber or file name), orientation, matrix size and spacing checked. Shared by the
PET volume (`pipelines.petlesions.volume`), the CT of the CT pipeline and the CT anatomy of PET lesions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipelines.errors import SeriesNotUsable
from pipelines.types import VolumeGeometry

ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 0.01


def read_headers(paths: Sequence[Path]) -> list[tuple[Path, Dataset]]:
    headers = []
    for path in paths:
        try:
            headers.append((Path(path), pydicom.dcmread(path)))
        except Exception as error:  # pydicom raises many types for corrupt files
            raise SeriesNotUsable(f"cannot read {Path(path).name}: {error}") from error
    return headers


def _slice_normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def geometry_order(datasets: Sequence[Dataset]) -> tuple[list[int], VolumeGeometry]:
    """Order slices by their position along the slice normal (never by InstanceNumber or file name)."""
    if not datasets:
        raise SeriesNotUsable("no slices")
    first = datasets[0]
    for attribute in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        if attribute not in first:
            raise SeriesNotUsable(f"slices lack {attribute}; the volume geometry is unknown")
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = _slice_normal(first)
    for ds in datasets:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=ORIENTATION_TOLERANCE):
            raise SeriesNotUsable("slices of the series have different orientations")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise SeriesNotUsable("slices of the series have different matrix sizes")
    positions = np.array([np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in datasets])
    order = list(np.argsort(positions, kind="stable"))
    sorted_positions = positions[order]
    if len(datasets) > 1:
        gaps = np.diff(sorted_positions)
        if np.any(gaps < SPACING_TOLERANCE_MM):
            raise SeriesNotUsable("two slices share one position (duplicate or multi-frame-time series)")
        slice_spacing = float(np.median(gaps))
        if np.max(np.abs(gaps - slice_spacing)) > max(0.05 * slice_spacing, SPACING_TOLERANCE_MM):
            raise SeriesNotUsable("slice spacing is not uniform (missing slices?)")
    else:
        slice_spacing = float(first.get("SliceThickness", 1.0) or 1.0)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = tuple(float(v) for v in datasets[order[0]].ImagePositionPatient)
    geometry = VolumeGeometry(
        origin_mm=origin,  # type: ignore[arg-type]
        spacing_mm=(column_spacing, row_spacing, slice_spacing),
        row_direction=tuple(float(v) for v in iop[:3]),  # type: ignore[arg-type]
        column_direction=tuple(float(v) for v in iop[3:]),  # type: ignore[arg-type]
        slice_direction=tuple(float(v) for v in normal),  # type: ignore[arg-type]
        shape=(len(datasets), int(first.Rows), int(first.Columns)),
    )
    return order, geometry
