"""Reading a DICOM whole-slide image (VL Whole Slide Microscopy, one instance per pyramid level) with wsidicom:
pyramid levels, tissue detection on a low-resolution level, the patch grid at the method's resolution and
the patches' pixels (tiles decoded by wsidicom through Pillow / pydicom's decoders).

Real slides lack modules the standard requires (the sample in ../shared/data has no Specimen or Optical Path
module): wsidicom opens them; nothing here needs those modules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipelines.histology.errors import NoTissue, SlideNotReadable
from pipelines.histology.settings import HistologySettings

logger = logging.getLogger(__name__)

MAX_TISSUE_LEVEL_PIXELS = 8192 * 8192  # the level tissue is detected on is read whole


@dataclass(frozen=True)
class Level:
    index: int  # wsidicom's pyramid level (log2 of the scale to the base level)
    microns_per_pixel: float
    columns: int
    rows: int
    sop_instance_uid: str  # the instance of this level (the heatmap's source when it is the tissue level)


@dataclass(frozen=True, eq=False)
class TissueMap:
    level: Level
    mask: np.ndarray  # bool [rows, columns] of `level`
    fraction: float  # of the level's area


@dataclass(frozen=True, eq=False)
class PatchGrid:
    level: Level  # the level patches are read from
    size: int
    origins: np.ndarray  # int [N, 2] (column, row) of each patch's top-left corner in `level` pixels
    tissue: np.ndarray  # float [N] tissue fraction of each patch
    candidates: int  # tissue patches before the `max_patches` subsample


@contextmanager
def open_slide(paths: Sequence[Path]) -> Iterator[object]:
    from wsidicom import WsiDicom

    try:
        slide = WsiDicom.open([Path(p) for p in paths])
    except Exception as error:  # wsidicom raises many types for files it cannot use; all mean the same here
        raise SlideNotReadable(f"whole-slide image cannot be opened: {error.__class__.__name__}: {error}") from None
    try:
        yield slide
    finally:
        slide.close()


def levels(slide: object) -> list[Level]:
    found = []
    for level in slide.levels:
        uid = str(level.datasets[0].uids.instance) if level.datasets else ""
        found.append(
            Level(int(level.level), float(level.mpp.width), int(level.size.width), int(level.size.height), uid)
        )
    if not found:
        raise SlideNotReadable("the series has no pyramid level wsidicom can read")
    return found


def nearest_level(available: Sequence[Level], microns_per_pixel: float) -> Level:
    return min(available, key=lambda level: abs(np.log(level.microns_per_pixel / microns_per_pixel)))


def read_region(slide: object, level: Level, column: int, row: int, columns: int, rows: int) -> np.ndarray:
    try:
        region = slide.read_region((column, row), level.index, (columns, rows))
    except Exception as error:  # a tile the decoders cannot read
        raise SlideNotReadable(f"tiles of level {level.index} cannot be decoded: {error}") from None
    return np.asarray(region.convert("RGB"), dtype=np.uint8)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if values.size and values.min() < values.max() else 1.0


def detect_tissue(slide: object, available: Sequence[Level], settings: HistologySettings) -> TissueMap:
    """Otsu's threshold on HSV saturation of a low-resolution level; holes filled, specks (< 1 % of the
    largest region) removed."""
    from skimage.color import rgb2hsv

    level = nearest_level(available, settings.tissue_microns_per_pixel)
    if level.columns * level.rows > MAX_TISSUE_LEVEL_PIXELS:
        raise SlideNotReadable(
            f"no pyramid level near {settings.tissue_microns_per_pixel} µm/pixel (the coarsest is "
            f"{level.columns} x {level.rows} pixels): tissue detection needs the slide's pyramid"
        )
    image = read_region(slide, level, 0, 0, level.columns, level.rows)
    saturation = rgb2hsv(image)[..., 1]
    threshold = max(_otsu(saturation), settings.min_saturation)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(saturation > threshold, iterations=1))
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        keep = np.flatnonzero(sizes >= 0.01 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return TissueMap(level, mask, float(mask.mean()))


def patch_grid(
    available: Sequence[Level], tissue: TissueMap, settings: HistologySettings, max_patches: int | None = -1
) -> PatchGrid:
    """Non-overlapping patches at the level nearest to the method's resolution, kept when at least
    `min_tissue_fraction` of their area is tissue; an even subsample of `max_patches` when there are more
    (`settings.max_patches` unless given; None: every tissue patch)."""
    if max_patches == -1:
        max_patches = settings.max_patches
    level = nearest_level(available, settings.microns_per_pixel)
    size = settings.patch_size
    scale_x = tissue.mask.shape[1] / level.columns
    scale_y = tissue.mask.shape[0] / level.rows
    origins, fractions = [], []
    integral = np.pad(tissue.mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for row in range(0, level.rows - size + 1, size):
        for column in range(0, level.columns - size + 1, size):
            x0, x1 = int(column * scale_x), max(int((column + size) * scale_x), int(column * scale_x) + 1)
            y0, y1 = int(row * scale_y), max(int((row + size) * scale_y), int(row * scale_y) + 1)
            area = (x1 - x0) * (y1 - y0)
            inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            fraction = inside / area
            if fraction >= settings.min_tissue_fraction:
                origins.append((column, row))
                fractions.append(fraction)
    if not origins:
        raise NoTissue(
            f"no {size} x {size} patch at {level.microns_per_pixel:.2f} µm/pixel is {settings.min_tissue_fraction:.0%} "
            f"tissue (tissue covers {tissue.fraction:.1%} of the slide)"
        )
    candidates = len(origins)
    index = np.arange(candidates)
    if max_patches is not None and candidates > max_patches:
        index = np.linspace(0, candidates - 1, max_patches).round().astype(int)
    return PatchGrid(level, size, np.asarray(origins)[index], np.asarray(fractions)[index], candidates)


def tissue_patches(
    slide: object, settings: HistologySettings, max_patches: int | None = -1
) -> tuple[TissueMap, PatchGrid]:
    """An opened slide's tissue map and the patch grid on it: what the pipeline and its training read."""
    available = levels(slide)
    tissue = detect_tissue(slide, available, settings)
    return tissue, patch_grid(available, tissue, settings, max_patches)


def read_patches(slide: object, grid: PatchGrid, start: int, stop: int) -> np.ndarray:
    return np.stack(
        [read_region(slide, grid.level, int(c), int(r), grid.size, grid.size) for c, r in grid.origins[start:stop]]
    )
