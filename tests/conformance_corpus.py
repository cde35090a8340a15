"""A conformance corpus of source series for the outputs: every real header in ../shared/data, and the
mutations real sites produce, written as series on disk for the PET and CT pipelines to derive from.

Real sources: the 17 SUV reference PET series (suv_dro, oncoray, CC BY 4.0), the real cropped PET/CT of
sts_002 and sts_003 (TCIA Soft-tissue-Sarcoma via MIRP, CC BY 3.0) with their expert RTSTRUCTs, and the real
Patient and Study modules of the QIN-HEADNECK reader's SEG (dcmqi examples, BSD) grafted onto a synthetic
PET/CT (the objects come without images). The real vendor PET headers (suv_vendor_headers) are
`tests/vendor_quirks.py`'s corpus.

Mutations (applied to sts_002): an item with an empty Type 1 attribute in the copied sequences (a real Philips
PET/CT's Referenced Study Sequence item without its Referenced SOP Class UID, a procedure code without its
meaning, another patient ID without its value), the slice order reversed with the signed Spacing Between
Slices some vendors write (-3.0), a tilted gantry (the CT's planes tilted about the patient's left-right axis,
its expert contour moved with them), and the optional modules missing (Patient Study, clinical trial, General
Reference, Device, VOI LUT) along with the Type 2 study identifiers.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import SHARED_DATA, STS_002, SUV_DRO
from tests.synthetic import DEFAULT_LESIONS, write_study
from tests.synthetic_ct import BASELINE_LESIONS, write_ct_study

STS_003 = SHARED_DATA / "sts_003"
QIN_SEG = SHARED_DATA / "qin_hn_expert_objects" / "seg.dcm"
MUTATIONS = ("empty-type-1-in-items", "reversed-slice-order", "gantry-tilt", "missing-optional-modules")
# The modules an IOD lists as optional (U), by the attributes that make them present.
OPTIONAL_MODULES = {
    "Patient Study": ("PatientAge", "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory"),
    "Clinical Trial": ("ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialSubjectID"),
    "General Reference": ("SourceImageSequence", "ReferencedImageSequence", "DerivationDescription"),
    "Device": ("DeviceSequence",),
    "VOI LUT": ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"),
}
STUDY_TYPE_2 = ("StudyID", "AccessionNumber", "ReferringPhysicianName")


@dataclass(frozen=True)
class Case:
    """One source study: its PET and CT series and the readers' annotations on each (empty when absent)."""

    name: str
    pet: tuple[Path, ...] = ()
    pet_annotations: tuple[Path, ...] = ()
    ct: tuple[Path, ...] = ()
    ct_annotations: tuple[Path, ...] = ()


def _images(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("RTSTRUCT")))


def _rtstruct(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(folder.glob("RTSTRUCT*.dcm")))


def dro_cases() -> list[Case]:
    return [
        Case(f"suv_dro/{folder.name}", _images(folder / "PT"), tuple(sorted((folder / "RS").glob("*.dcm"))))
        for folder in sorted(SUV_DRO.glob("DRO_*"))
        if (folder / "PT").is_dir()
    ]


def sts_case(name: str, root: Path) -> Case:
    return Case(name, _images(root / "PET"), _rtstruct(root / "PET"), _images(root / "CT"), _rtstruct(root / "CT"))


def _copy(case: Case, folder: Path) -> Case:
    """The case's files copied under `folder` (mutations change the copies, never the shared data)."""

    def copied(paths: tuple[Path, ...], sub: str) -> tuple[Path, ...]:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        return tuple(Path(shutil.copy(p, folder / sub / p.name)) for p in paths)

    return Case(
        case.name,
        copied(case.pet, "pet"),
        copied(case.pet_annotations, "pet-rs"),
        copied(case.ct, "ct"),
        copied(case.ct_annotations, "ct-rs"),
    )


def _rewrite(paths: tuple[Path, ...], change: Callable[[Dataset], None]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _empty_type_1_in_items(ds: Dataset) -> None:
    study = Dataset()
    study.ReferencedSOPClassUID = ""  # as a real Philips PET/CT writes it
    study.ReferencedSOPInstanceUID = generate_uid()
    ds.ReferencedStudySequence = [study]
    ds.ProcedureCodeSequence = [_code("CTCAP", "L", ""), _code("PETWB", "L", "PET whole body")]
    other = Dataset()
    other.PatientID = ""
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]


def _missing_optional_modules(ds: Dataset) -> None:
    for keywords in OPTIONAL_MODULES.values():
        for keyword in keywords:
            if keyword in ds and not (keyword == "PatientWeight" and ds.get("Modality") == "PT"):
                del ds[keyword]  # (a PET keeps the weight its SUV needs; sts PET is stored as SUV anyway)
    for keyword in STUDY_TYPE_2:
        if keyword in ds:
            del ds[keyword]


def _reverse_slice_order(paths: tuple[Path, ...]) -> None:
    count = len(paths)

    def reverse(ds: Dataset) -> None:
        ds.InstanceNumber = count + 1 - int(ds.InstanceNumber)
        ds.SpacingBetweenSlices = "-3.0"  # signed for the order, as seen from a real Philips CT

    _rewrite(paths, reverse)


TILT_DEGREES = 15.0


def _tilt(ct: tuple[Path, ...], annotations: tuple[Path, ...]) -> None:
    """Gantry tilted about the left-right axis: each plane's columns run along (0, cos t, sin t) from the same
    position, and the expert contour's points move with the planes (point (x, y, z) of the plane through z:
    (x, y0 + (y - y0) cos t, z + (y - y0) sin t), y0 the planes' first row)."""
    cos, sin = math.cos(math.radians(TILT_DEGREES)), math.sin(math.radians(TILT_DEGREES))
    y0 = float(pydicom.dcmread(ct[0], stop_before_pixels=True).ImagePositionPatient[1])

    def plane(ds: Dataset) -> None:
        ds.GantryDetectorTilt = TILT_DEGREES
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(cos, 6), round(sin, 6)]

    def contours(ds: Dataset) -> None:
        for roi in ds.ROIContourSequence:
            for contour in roi.get("ContourSequence", []):
                points = [float(v) for v in contour.ContourData]
                moved = []
                for x, y, z in zip(points[0::3], points[1::3], points[2::3]):
                    moved += [x, y0 + (y - y0) * cos, z + (y - y0) * sin]
                contour.ContourData = [f"{v:.4f}" for v in moved]

    _rewrite(ct, plane)
    _rewrite(annotations, contours)


def mutated(case: Case, mutation: str, folder: Path) -> Case:
    """A copy of the case with one mutation applied (to every image of both series, where it applies)."""
    copy = _copy(case, folder)
    if mutation == "empty-type-1-in-items":
        _rewrite(copy.pet + copy.ct, _empty_type_1_in_items)
    elif mutation == "missing-optional-modules":
        _rewrite(copy.pet + copy.ct, _missing_optional_modules)
    elif mutation == "reversed-slice-order":
        _reverse_slice_order(copy.pet)
        _reverse_slice_order(copy.ct)
    elif mutation == "gantry-tilt":  # a CT acquisition's property: the PET is left as it is
        _tilt(copy.ct, copy.ct_annotations)
    else:
        raise ValueError(mutation)
    return Case(f"{case.name} {mutation}", copy.pet, copy.pet_annotations, copy.ct, copy.ct_annotations)


def qin_headneck_case(folder: Path) -> Case:
    """The real Patient and Study modules of the QIN-HEADNECK reader's SEG on a synthetic PET and CT."""
    source = pydicom.dcmread(QIN_SEG, stop_before_pixels=True)
    keywords = (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
        "ClinicalTrialSubjectID",
        "ClinicalTrialTimePointID",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    )

    def graft(ds: Dataset) -> None:
        for keyword in keywords:
            if keyword in source:
                ds[keyword] = source[keyword]

    pet = write_study(folder / "pet", shape_zyx=(24, 48, 48), lesions=DEFAULT_LESIONS[2:3], with_ct=False)
    ct = write_ct_study(folder / "ct", BASELINE_LESIONS[:2], "20260105")
    _rewrite(tuple(pet.pet_files) + tuple(ct.ct_files) + (ct.rtstruct,), graft)
    return Case("qin_hn grafted", tuple(pet.pet_files), (), tuple(ct.ct_files), (ct.rtstruct,))


def real_cases() -> list[Case]:
    return [*dro_cases(), sts_case("sts_002", STS_002), sts_case("sts_003", STS_003)]
