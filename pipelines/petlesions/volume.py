"""Load a PET series into an SUV volume: slice order from geometry, per-slice rescale, orientation checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.errors import SeriesNotUsable
from pipelines.imaging.series import geometry_order, read_headers
from pipelines.petlesions.suv import suv_factors
from pipelines.petlesions.types import PetVolume


def load_pet_volume(paths: Sequence[Path]) -> PetVolume:
    """Read a PET series and return its SUV volume; raises SeriesNotUsable or SuvNotComputable."""
    headers = read_headers(paths)
    datasets = [ds for _, ds in headers]
    series_uids = {ds.SeriesInstanceUID for ds in datasets}
    if len(series_uids) != 1:
        raise SeriesNotUsable("files belong to more than one series")
    if any(ds.get("Modality") != "PT" for ds in datasets):
        raise SeriesNotUsable("not a PET series (Modality is not PT)")
    order, geometry = geometry_order(datasets)
    ordered = [datasets[i] for i in order]
    factors, conversion = suv_factors(ordered)
    stack = np.empty(geometry.shape, dtype=np.float32)
    for index, ds in enumerate(ordered):
        # RescaleSlope/Intercept differ per slice on most scanners; apply each slice's own.
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        stored = ds.pixel_array.astype(np.float64)
        stack[index] = (stored * slope + intercept) * factors[index]
    return PetVolume(
        series_instance_uid=str(ordered[0].SeriesInstanceUID),
        study_instance_uid=str(ordered[0].StudyInstanceUID),
        frame_of_reference_uid=str(ordered[0].get("FrameOfReferenceUID", "")),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered),
        source_paths=tuple(headers[i][0] for i in order),
        geometry=geometry,
        suv=stack,
        conversion=conversion,
    )
