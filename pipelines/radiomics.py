"""CT radiomics of the longitudinal delta-radiomics method (primary tumour "P" and merged metastases "M").

Settings as published: resampling to 1 × 1 × 1 mm with linear interpolation, bin width 25 (HU), the original
image and all eight wavelet decompositions, all feature classes. The extraction is a plain pyradiomics
call with `PARAMETERS`; the parameter file is stored with every result (`parameter_file_text`).

Groundwork of the CT radiomics issue: CT loading, RTSTRUCT contours rasterised on the CT grid and the
extraction itself. Pairing, deltas, Q/R retrieval, lesion tracking and reporting are not built yet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import yaml
from matplotlib.path import Path as PolygonPath

from pipelines.errors import PipelineError

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


def load_ct(paths: Sequence[Path]) -> sitk.Image:
    """A CT series as a SimpleITK image in HU, slices ordered along the slice normal."""
    headers = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, dtype=float), (2, 3)))
        headers.append((float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))), str(path)))
    if len(headers) < 2:
        raise RadiomicsError("a CT series needs at least two slices")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([path for _, path in sorted(headers)])
    return reader.Execute()


def rtstruct_mask(rtstruct: Path, ct: sitk.Image, roi_names: Sequence[str]) -> sitk.Image:
    """The union of the named ROIs' closed planar contours, rasterised on the CT grid (even-odd rule, so
    that contours inside contours are holes); a voxel is inside when its centre is."""
    ds = pydicom.dcmread(rtstruct)
    numbers = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    wanted = {n for n, name in numbers.items() if name in roi_names}
    if not wanted:
        raise RadiomicsError(
            f"{rtstruct.name}: no ROI named {', '.join(roi_names)} (has {', '.join(numbers.values())})"
        )
    size = ct.GetSize()  # x, y, z
    mask = np.zeros(size[::-1], dtype=np.uint8)
    columns, rows = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    centres = np.column_stack([columns.ravel(), rows.ravel()])
    for roi in ds.ROIContourSequence:
        if int(roi.ReferencedROINumber) not in wanted:
            continue
        for contour in getattr(roi, "ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            index = np.array([ct.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
            z = int(round(float(np.median(index[:, 2]))))
            if not 0 <= z < size[2] or len(index) < 3:
                continue
            inside = PolygonPath(index[:, :2]).contains_points(centres).reshape(size[1], size[0])
            mask[z] ^= inside.astype(np.uint8)
    if not mask.any():
        raise RadiomicsError(f"{rtstruct.name}: the contours of {', '.join(roi_names)} cover no CT voxel")
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(ct)
    return image


def extract_features(ct: sitk.Image, mask: sitk.Image, parameters: dict = PARAMETERS) -> dict[str, float]:
    """pyradiomics features (diagnostics left out) of the mask's label 1 region."""
    from radiomics import featureextractor

    extractor = featureextractor.RadiomicsFeatureExtractor(parameters)
    result = extractor.execute(ct, mask)
    return {name: float(value) for name, value in result.items() if not name.startswith("diagnostics_")}
