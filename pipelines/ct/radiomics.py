"""CT radiomics of the longitudinal delta-radiomics method (primary tumour "P" and merged metastases "M").

Settings as published: resampling to 1 × 1 × 1 mm with linear interpolation, bin width 25 (HU), the original
image and all eight wavelet decompositions, all feature classes. The extraction is a plain pyradiomics
call with `PARAMETERS`; the parameter file is stored with every result (`parameter_file_text`).
The volumes of one study (P, M and, optionally, each lesion) are extracted in parallel worker processes,
each reading the whole CT from a memory-mapped file, so the values equal a direct call (tested).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from common.log_filters import quiet_third_party
from common.processes import die_with_parent
from pipelines.ct.types import FeatureSet
from pipelines.errors import PipelineError
from pipelines.imaging.geometry import to_sitk
from pipelines.types import VolumeGeometry

logger = logging.getLogger(__name__)

PARAMETERS: dict = {
    "setting": {
        "binWidth": 25,
        "resampledPixelSpacing": [1.0, 1.0, 1.0],
        "interpolator": "sitkLinear",
        "label": 1,
    },
    # Original plus the eight wavelet decompositions (LLH ... HHH), pyradiomics' default wavelet settings.
    "imageType": {"Original": {}, "Wavelet": {}},
    "featureClass": {
        "shape": None,
        "firstorder": None,
        "glcm": None,
        "glrlm": None,
        "glszm": None,
        "gldm": None,
        "ngtdm": None,
    },
}


class RadiomicsError(PipelineError):
    """The CT or its contour cannot be turned into an image and mask for extraction."""


def parameter_file_text(parameters: dict = PARAMETERS) -> str:
    return yaml.safe_dump(parameters, sort_keys=True)


def pyradiomics_version() -> str:
    import radiomics

    return str(radiomics.__version__)


def extract_features(ct: sitk.Image, mask: sitk.Image, parameters: dict = PARAMETERS) -> dict[str, float]:
    """pyradiomics features (diagnostics left out) of the mask's label 1 region."""
    from radiomics import featureextractor

    extractor = featureextractor.RadiomicsFeatureExtractor(parameters)
    result = extractor.execute(ct, mask)
    return {name: float(value) for name, value in result.items() if not name.startswith("diagnostics_")}


def _extract_one(
    name: str, ct_file: Path, box: tuple[slice, ...], mask_box: np.ndarray, geometry: VolumeGeometry, parameters: dict
) -> tuple[str, int, float, dict[str, float]]:
    """Worker: one volume's features (runs in a separate process on the whole CT, memory-mapped)."""
    begun = time.perf_counter()
    hu = np.load(ct_file, mmap_mode="r")
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[box] = mask_box
    features = extract_features(to_sitk(np.asarray(hu), geometry), to_sitk(mask, geometry), parameters)
    return name, int(mask_box.sum()), time.perf_counter() - begun, features


def _extraction_process() -> None:
    """Initializer of an extraction process: it ends with its parent, and pyradiomics' repeated notes stay out
    of the log (its own stderr handler prints them there, outside the node's logging)."""
    die_with_parent()
    quiet_third_party()


def extract_volumes(
    hu: np.ndarray,
    geometry: VolumeGeometry,
    masks: Mapping[str, np.ndarray],
    processes: int,
    workdir: Path,
    tracking_uids: Mapping[str, str] | None = None,
    parameters: dict = PARAMETERS,
) -> tuple[FeatureSet, ...]:
    """Features of every named mask, extracted in up to `processes` worker processes.

    Workers get the whole CT (a memory-mapped file in `workdir`), not a crop: pyradiomics places its 1 mm
    grid relative to the image's own voxel grid, so a cropped image would give slightly different values."""
    ct_file = Path(workdir) / "ct-hu.npy"
    np.save(ct_file, np.ascontiguousarray(hu, dtype=np.float32))
    tasks = []
    for name, mask in masks.items():
        if not mask.any():
            raise RadiomicsError(f"volume {name} has no voxel")
        found = np.argwhere(mask)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(found.min(axis=0), found.max(axis=0)))
        tasks.append((name, ct_file, box, mask[box].astype(np.uint8), geometry, parameters))
    try:
        if processes <= 1 or len(tasks) <= 1:
            results = [_extract_one(*task) for task in tasks]
        else:
            context = get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(processes, len(tasks)), mp_context=context, initializer=_extraction_process
            ) as pool:
                results = [future.result() for future in [pool.submit(_extract_one, *task) for task in tasks]]
    finally:
        ct_file.unlink(missing_ok=True)
    for name, voxels, seconds, _ in results:
        logger.info("radiomics volume %s: %d voxels in %.2f s", name, voxels, seconds)
    uids = tracking_uids or {}
    return tuple(FeatureSet(n, voxels, seconds, features, uids.get(n, "")) for n, voxels, seconds, features in results)
