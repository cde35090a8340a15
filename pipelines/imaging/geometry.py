"""Conversions between the volume grid of `VolumeGeometry` and SimpleITK images or patient coordinates."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pipelines.types import VolumeGeometry


def direction_matrix(geometry: VolumeGeometry) -> np.ndarray:
    """3×3 matrix whose columns are the x (column index), y (row index) and z (slice index) axes."""
    return np.column_stack([geometry.row_direction, geometry.column_direction, geometry.slice_direction])


def to_sitk(array: np.ndarray, geometry: VolumeGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.origin_mm)
    image.SetSpacing(geometry.spacing_mm)
    image.SetDirection(tuple(direction_matrix(geometry).flatten()))
    return image


def index_to_patient(geometry: VolumeGeometry, index_zyx: np.ndarray) -> np.ndarray:
    """Patient coordinates (mm) of fractional voxel indices given as [slice, row, column]."""
    index_xyz = np.asarray(index_zyx, dtype=float)[..., ::-1]
    return np.asarray(geometry.origin_mm) + (index_xyz * np.asarray(geometry.spacing_mm)) @ direction_matrix(geometry).T


def patient_to_index(geometry: VolumeGeometry, points_mm: np.ndarray) -> np.ndarray:
    """Fractional voxel indices [slice, row, column] of patient coordinates (mm)."""
    relative = np.asarray(points_mm, dtype=float) - np.asarray(geometry.origin_mm)
    index_xyz = (relative @ direction_matrix(geometry)) / np.asarray(geometry.spacing_mm)
    return index_xyz[..., ::-1]
