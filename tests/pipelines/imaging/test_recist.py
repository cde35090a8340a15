"""RECIST diameters on masks of known shape."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.imaging.recist import axial_diameters


def _ellipse(semi_rows_mm: float, semi_columns_mm: float, spacing_mm: float, slices: int = 3) -> np.ndarray:
    n = int(2 * max(semi_rows_mm, semi_columns_mm) / spacing_mm) + 5
    r, c = (np.indices((n, n)) - (n - 1) / 2.0) * spacing_mm
    plane = (r / semi_rows_mm) ** 2 + (c / semi_columns_mm) ** 2 <= 1.0
    return np.repeat(plane[None], slices, axis=0)


def test_ellipse_axes_are_measured_within_a_voxel() -> None:
    diameters = axial_diameters(_ellipse(10.0, 20.0, 1.0), 1.0, 1.0)
    assert diameters.long_axis_mm == pytest.approx(40.0, abs=1.0)
    assert diameters.short_axis_mm == pytest.approx(20.0, abs=1.0)
    assert diameters.target


def test_oblique_lesion_long_axis_is_its_true_length() -> None:
    mask = np.zeros((1, 60, 60), dtype=bool)
    for k in range(30):
        mask[0, 10 + k, 10 + k] = True  # a one-voxel line at 45 degrees
    diameters = axial_diameters(mask, 1.0, 1.0)
    assert diameters.long_axis_mm == pytest.approx(29 * np.sqrt(2) + 1.0, abs=0.01)


def test_small_lesion_is_not_a_target() -> None:
    diameters = axial_diameters(_ellipse(3.0, 4.0, 1.0), 1.0, 1.0)
    assert diameters.long_axis_mm < 10.0 and not diameters.target


def test_lymph_node_is_a_target_by_its_short_axis() -> None:
    elongated = _ellipse(4.0, 12.0, 1.0)  # about 24 x 8 mm
    assert axial_diameters(elongated, 1.0, 1.0).target  # as a lesion: long axis >= 10 mm
    assert not axial_diameters(elongated, 1.0, 1.0, lymph_node=True).target  # as a node: short axis < 15 mm
    assert axial_diameters(_ellipse(9.0, 12.0, 1.0), 1.0, 1.0, lymph_node=True).target  # short axis about 18 mm
