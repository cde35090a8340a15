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


def test_nodes_are_judged_by_their_short_axis_whoever_named_them() -> None:
    """RECIST 1.1: a node is a target by a short axis of at least 15 mm, any other lesion by a long axis of at least
    10 mm. An automatic PET lesion 18 x 12 mm whose organ is a lymph node is not a target (12 < 15); in the lung it
    is (18 >= 10); a node 24 x 16 mm is (16 >= 15)."""
    from pipelines.imaging.recist import meets_target_size, nodal_site
    from pipelines.petlesions.lesions import with_organ_node_rule
    from pipelines.petlesions.types import Lesion, LesionMeasurements
    from pipelines.types import VolumeGeometry

    assert nodal_site("mediastinal lymph node") and nodal_site("Lymph node") and nodal_site("hilar nodes")
    assert not nodal_site("lung") and not nodal_site("abdomen") and not nodal_site("")
    assert not meets_target_size(18.0, 12.0, lymph_node=True) and meets_target_size(18.0, 12.0, lymph_node=False)
    assert meets_target_size(24.0, 16.0, lymph_node=True)

    geometry = VolumeGeometry((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1))

    def lesion(long_axis: float, short_axis: float) -> Lesion:
        measurements = LesionMeasurements(5, 3, 4, 2, 6, 10, 2, 3, 1, (0, 0, 0), long_axis, short_axis, True)
        return Lesion(1, "Lesion 1", "1.2.3", (0, 0, 0), np.ones((1, 1, 1), bool), measurements)

    node = with_organ_node_rule(lesion(18.0, 12.0), "mediastinal lymph node", geometry)
    assert node.measurements.lymph_node and not node.measurements.recist_target
    assert with_organ_node_rule(lesion(18.0, 12.0), "lung", geometry).measurements.recist_target
    assert with_organ_node_rule(lesion(24.0, 16.0), "lymph node", geometry).measurements.recist_target
