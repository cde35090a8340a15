"""A corpus of vendor PET series for tests: the real GE, Siemens and Philips PET header values of
../shared/data/suv_vendor_headers (cornerstonejs calculate-suv test metadata, MIT licence) turned into
series (synthetic pixels, a known lesion), plus the real-world quirks seen on site: an empty Referenced
Study Sequence, de-identified data without a De-identification Method, private elements, values that
break their VR, over-long text.

The pixel values are scaled so that the SUV the node computes from each vendor's header equals the
phantom's SUV (the SUV arithmetic itself is tested on the reference suite in test_suv_reference.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pipelines.petlesions.suv import suv_factors
from tests.conftest import SHARED_DATA
from tests.synthetic import SyntheticLesion, SyntheticStudy, write_study

VENDOR_HEADERS = SHARED_DATA / "suv_vendor_headers"
HEADER_FILES = sorted(VENDOR_HEADERS.glob("*-instances.json"))
QUIRKS = ("empty-sequence", "deidentified-without-method", "private-elements", "invalid-values")
LESION = (SyntheticLesion((0.0, 0.0, 0.0), 12.0, 8.0),)

TOP_LEVEL = (
    "SeriesDate",
    "SeriesTime",
    "PatientSex",
    "PatientWeight",
    "PatientSize",
    "AcquisitionDate",
    "AcquisitionTime",
    "FrameReferenceTime",
    "DecayCorrection",
    "Units",
    "CorrectedImage",
    "ActualFrameDuration",
)
RADIOPHARMACEUTICAL = (
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "RadiopharmaceuticalStartTime",
    "RadiopharmaceuticalStartDateTime",
)
PHILIPS = {"SUVScaleFactor": 0x00, "ActivityConcentrationScaleFactor": 0x09}


def _apply_header(ds: Dataset, header: dict) -> None:
    for keyword in TOP_LEVEL:
        if keyword in header:
            setattr(ds, keyword, header[keyword])
        elif keyword in ds:
            del ds[keyword]
    info = ds.RadiopharmaceuticalInformationSequence[0]
    for keyword in RADIOPHARMACEUTICAL:
        if keyword in header:
            setattr(info, keyword, header[keyword])  # verbatim, trailing space of a real GE value included
        elif keyword in info:
            del info[keyword]
    if 0x70530010 in ds:
        del ds[0x70530010]
    philips = header.get("PhilipsPETPrivateGroup") or {}
    if philips:
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        for name, element in PHILIPS.items():
            if name in philips:
                block.add_new(element, "DS", str(philips[name]))


def _apply_quirk(ds: Dataset, quirk: str) -> None:
    if quirk == "empty-sequence":
        ds.ReferencedStudySequence = []
        ds.ProcedureCodeSequence = []
    elif quirk == "deidentified-without-method":
        ds.PatientIdentityRemoved = "YES"
        for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
            if keyword in ds:
                del ds[keyword]
    elif quirk == "private-elements":
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0C, "IS", "1")
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x27, "SH", "/1.0:1")
    elif quirk == "invalid-values":
        ds.PatientAge = "45"  # AS wants 045Y
        ds.StudyID = "STUDY-ID-FAR-TOO-LONG"  # SH allows 16
        ds.PatientSex = "m"  # CS is upper case
        ds.AccessionNumber = "ACC-000000000000000001"  # SH allows 16
        ds.StudyDescription = "PET/CT\\whole body"  # a backslash: two values where LO allows one
        ds.ReferringPhysicianName = "Dr. Who^" * 20  # PN over-long


def write_vendor_series(folder: Path, header_file: Path, quirks: tuple[str, ...] = ()) -> SyntheticStudy:
    """A PET series with the vendor's header values (instance k takes the file's instance k mod n)."""
    headers = json.loads(header_file.read_text())
    study = write_study(folder, with_ct=False, shape_zyx=(24, 48, 48), spacing_xyz=(4.0, 4.0, 4.0), lesions=LESION)
    datasets = [pydicom.dcmread(path) for path in study.pet_files]
    old_factors, _ = suv_factors(datasets)
    for k, ds in enumerate(datasets):
        _apply_header(ds, headers[k % len(headers)])
        for quirk in quirks:
            _apply_quirk(ds, quirk)
    new_factors, _ = suv_factors(datasets)
    for ds, old, new, path in zip(datasets, old_factors, new_factors, study.pet_files):
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * old / new:.10g}"
        ds.save_as(path, enforce_file_format=True)
    return study
