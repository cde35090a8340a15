"""Receive edge: turn the bytes of a C-STORE into a validated `InstanceHeader`."""

from __future__ import annotations

import re
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.errors import DatasetInvalid, UndecodableDataset
from pipelines.types import InstanceHeader

# PS3.5 9.1: digits and dots, no empty component, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UNCOMPRESSED = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
}


HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "Modality",
    "StudyDate",
    "AccessionNumber",
    "SeriesNumber",
    "SeriesDescription",
    "Manufacturer",
    "FrameOfReferenceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "BitsAllocated",
    "PixelData",
]


def valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and UID_PATTERN.match(value) is not None


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()[:limit]


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _check_pixel_data_length(ds: Dataset, transfer_syntax: str) -> None:
    if "PixelData" not in ds or transfer_syntax not in UNCOMPRESSED:
        return
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
        ) // 8
    except (AttributeError, TypeError, ValueError) as error:
        raise DatasetInvalid(f"image attributes missing or invalid: {error}") from None
    actual = len(ds.PixelData)
    if actual < expected:
        raise DatasetInvalid(f"pixel data holds {actual} bytes, the image needs {expected} (truncated?)")


def parse_received(data: bytes, affected_sop_instance_uid: str | None = None) -> InstanceHeader:
    """Decode a received file (preamble + meta + data set) and validate what the index needs."""
    try:
        # Only the attributes the index and the checks need are decoded (fast); pydicom still walks
        # the whole stream, so a truncated or corrupt encoding fails here.
        ds = pydicom.dcmread(BytesIO(data), force=False, specific_tags=HEADER_TAGS)
    except Exception as error:  # pydicom raises many types on bad input; all mean "cannot decode"
        raise UndecodableDataset(f"not a decodable DICOM data set: {error.__class__.__name__}: {error}") from None
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        # pydicom reads almost any bytes as some data set; one without SOP Common is not DICOM.
        raise UndecodableDataset("not a DICOM data set: no SOP Class or SOP Instance UID could be decoded")
    study_uid = str(ds.get("StudyInstanceUID", ""))
    study_uid = study_uid if valid_uid(study_uid) else ""
    try:
        return _header(ds, affected_sop_instance_uid)
    except DatasetInvalid as error:
        raise DatasetInvalid(str(error), study_uid) from None


def _header(ds: Dataset, affected_sop_instance_uid: str | None) -> InstanceHeader:
    meta = ds.file_meta
    transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    identifiers = {
        "SOPClassUID": ds.get("SOPClassUID"),
        "SOPInstanceUID": ds.get("SOPInstanceUID"),
        "StudyInstanceUID": ds.get("StudyInstanceUID"),
        "SeriesInstanceUID": ds.get("SeriesInstanceUID"),
    }
    for keyword, value in identifiers.items():
        if value is None:
            raise DatasetInvalid(f"{keyword} is missing")
        if not valid_uid(str(value)):
            # Quoted with repr and clipped so that a hostile value cannot forge log lines.
            raise DatasetInvalid(f"{keyword} is not a valid UID: {str(value)[:80]!r}")
    sop_instance_uid = str(identifiers["SOPInstanceUID"])
    if affected_sop_instance_uid and affected_sop_instance_uid != sop_instance_uid:
        raise DatasetInvalid("SOPInstanceUID of the data set differs from the C-STORE request's")
    frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "")
    if frame_of_reference and not valid_uid(frame_of_reference):
        raise DatasetInvalid(f"FrameOfReferenceUID is not a valid UID: {frame_of_reference[:80]!r}")
    _check_pixel_data_length(ds, transfer_syntax)
    return InstanceHeader(
        sop_class_uid=str(UID(str(identifiers["SOPClassUID"]))),
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=str(identifiers["StudyInstanceUID"]),
        series_instance_uid=str(identifiers["SeriesInstanceUID"]),
        transfer_syntax_uid=transfer_syntax,
        patient_id=_text(ds, "PatientID", 64),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        modality=_text(ds, "Modality", 16),
        study_date=_text(ds, "StudyDate", 8),
        accession_number=_text(ds, "AccessionNumber", 16),
        series_number=_int_or_none(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 64),
        manufacturer=_text(ds, "Manufacturer", 64),
        frame_of_reference_uid=frame_of_reference,
        instance_number=_int_or_none(ds, "InstanceNumber"),
    )
