"""Reading whole-slide images and preparing the method's patches: the real sample slide (../shared/data,
CMU-1-Small-Region as DICOM, no Specimen or Optical Path module) and synthetic slides with known tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.histology import slide as wsi
from pipelines.histology import stain
from pipelines.histology.analysis import heatmap
from pipelines.histology.errors import NoTissue, SlideNotReadable
from pipelines.histology.settings import HistologySettings
from tests.synthetic_slides import write_slide

REAL = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "wsi_cmu1_small"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slide"), "P-TISSUE", infiltrated=True, size=1536)


def test_the_real_sample_slide_opens_and_gives_20x_tissue_patches() -> None:
    if not REAL.is_dir():
        pytest.skip("../shared/data/wsi_cmu1_small is not present")
    settings = HistologySettings()
    with wsi.open_slide(sorted(REAL.glob("*.dcm"))) as opened:
        available = wsi.levels(opened)
        assert available[0].microns_per_pixel == pytest.approx(0.499, abs=1e-3)
        tissue = wsi.detect_tissue(opened, available, settings)
        grid = wsi.patch_grid(available, tissue, settings)
        patches = wsi.read_patches(opened, grid, 0, 4)
    # CMU-1-Small-Region is a crop of tissue with some background at its edges.
    assert 0.3 < tissue.fraction < 0.98
    assert grid.level.index == 0 and grid.size == 256
    assert 20 <= len(grid.origins) <= (2220 // 256) * (2967 // 256)
    assert patches.shape == (4, 256, 256, 3) and patches.dtype == np.uint8
    assert all(s.startswith("1.2.") for s in (lv.sop_instance_uid for lv in available))


def test_tissue_detection_finds_the_synthetic_tissue_region(synthetic) -> None:
    settings = HistologySettings()
    with wsi.open_slide(synthetic.files) as opened:
        available = wsi.levels(opened)
        tissue = wsi.detect_tissue(opened, available, settings)
        grid = wsi.patch_grid(available, tissue, settings)
    # The ellipse covers pi * 0.42 * 0.36 = 47.5 % of the slide.
    assert tissue.fraction == pytest.approx(0.475, abs=0.05)
    assert tissue.level.microns_per_pixel == pytest.approx(4.0)  # the coarsest level, nearest 8 µm/pixel
    centre = tissue.mask.shape[0] // 2
    assert tissue.mask[centre, centre] and not tissue.mask[0, 0]
    assert 0 < len(grid.origins) < 36 and grid.candidates == len(grid.origins)


def test_at_most_max_patches_are_taken_evenly(synthetic) -> None:
    settings = HistologySettings(max_patches=5)
    with wsi.open_slide(synthetic.files) as opened:
        available = wsi.levels(opened)
        grid = wsi.patch_grid(available, wsi.detect_tissue(opened, available, settings), settings)
    assert len(grid.origins) == 5 and grid.candidates > 5
    assert len({tuple(o) for o in grid.origins}) == 5


def test_a_blank_slide_has_no_tissue(tmp_path: Path) -> None:
    import pydicom

    slide = write_slide(tmp_path / "blank", "P-BLANK", infiltrated=False, size=512, levels=2)
    settings = HistologySettings(min_saturation=0.9)  # nothing is that saturated: all background
    with wsi.open_slide(slide.files) as opened:
        available = wsi.levels(opened)
        with pytest.raises(NoTissue):
            wsi.patch_grid(available, wsi.detect_tissue(opened, available, settings), settings)
    pydicom.dcmread(slide.files[0])  # (the slide itself is fine)


def test_a_file_that_is_not_a_slide_is_refused_clearly(tmp_path: Path) -> None:
    bogus = tmp_path / "x.dcm"
    bogus.write_bytes(b"\0" * 132)
    with pytest.raises(SlideNotReadable, match="cannot be opened"):
        with wsi.open_slide([bogus]):
            pass


def test_macenko_maps_a_slides_stain_to_the_reference(synthetic) -> None:
    settings = HistologySettings()
    with wsi.open_slide(synthetic.files) as opened:
        available = wsi.levels(opened)
        grid = wsi.patch_grid(available, wsi.detect_tissue(opened, available, settings), settings)
        patches = wsi.read_patches(opened, grid, 0, len(grid.origins))
    model = stain.fit(patches, "macenko")
    assert model.method == "macenko" and model.stains.shape == (3, 2)
    assert np.allclose(np.linalg.norm(model.stains, axis=0), 1.0, atol=1e-6)
    normalised = stain.normalise(patches, model)
    assert normalised.shape == patches.shape and normalised.dtype == np.uint8
    # Normalising an already normalised slide changes little: the mapping is to a fixed reference.
    again = stain.normalise(normalised, stain.fit(normalised, "macenko"))
    assert np.abs(again.astype(float) - normalised.astype(float)).mean() < 12
    reinhard = stain.fit(patches, "reinhard")
    lab = stain.rgb_to_lab(stain.normalise(patches, reinhard).astype(float) / 255)
    assert np.allclose(lab.reshape(-1, 3).mean(0), stain.REFERENCE_LAB_MEAN, atol=6)


def test_the_heatmap_paints_each_patch_with_its_scaled_attention() -> None:
    level = wsi.Level(0, 0.5, 1024, 1024, "1.2.3")
    tissue = wsi.TissueMap(wsi.Level(3, 4.0, 128, 128, "1.2.4"), np.ones((128, 128), bool), 1.0)
    grid = wsi.PatchGrid(level, 256, np.array([[0, 0], [256, 0]]), np.ones(2), 2)
    painted = heatmap(tissue, grid, np.array([0.2, 0.8]))
    assert painted[:32, :32].mean() == pytest.approx(0.25) and painted[:32, 32:64].mean() == pytest.approx(1.0)
    assert painted[64:, :].max() == 0
