"""Receive edge: turn the bytes of a C-STORE into a validated `InstanceHeader`, or refuse them.

Before an instance may be acknowledged:
- the whole data set parses (`dicom_node.encoding.walk`: every element of every item, not only the tags
  the index needs); a deflated one is first inflated under `max_inflated_bytes`;
- its SOP Class UID equals the request's Affected SOP Class UID, its SOP Instance UID the request's;
- the identifying UIDs are valid (digits and dots, at most 64 characters);
- image storage classes carry pixel data; pixel data comes with valid Rows, Columns, Bits Allocated,
  Samples per Pixel and Number of Frames, natively encoded with the length they imply (one pad byte
  allowed) under an uncompressed syntax, encapsulated with at least one fragment per frame under a
  compressed one.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID, MPEGTransferSyntaxes
from pynetdicom import sop_class

from dicom_node.encoding import PixelShape, inflate, walk
from dicom_node.errors import DatasetInvalid, UndecodableDataset
from storage.types import InstanceHeader

# PS3.5 9.1: digits and dots, no empty component, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
DEFAULT_MAX_INFLATED_BYTES = 512 * 1024 * 1024
VIDEO_SYNTAXES = {str(syntax) for syntax in MPEGTransferSyntaxes}  # MPEG-2/4, HEVC: one stream for all frames

HEADER_KEYWORDS = [
    "SpecificCharacterSet",
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
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
]
HEADER_TAGS = frozenset(int(Tag(keyword)) for keyword in HEADER_KEYWORDS)

# Storage classes whose IOD requires pixel data (the image classes, Segmentation and Parametric Map).
PIXEL_DATA_REQUIRED = frozenset(str(getattr(sop_class, name)) for name in dir(sop_class) if "ImageStorage" in name) | {
    str(sop_class.SegmentationStorage),
    str(sop_class.ParametricMapStorage),
}
BITS_ALLOCATED = {"PixelData": {1, 8, 16, 32, 64}, "FloatPixelData": {32}, "DoubleFloatPixelData": {64}}


def valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and UID_PATTERN.match(value) is not None


def parse_received(
    data: bytes,
    affected_sop_instance_uid: str | None = None,
    affected_sop_class_uid: str | None = None,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> InstanceHeader:
    """A received file (preamble + file meta + data set): validate and return its header."""
    stream = BytesIO(data)
    try:
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
    except Exception as error:  # pydicom raises many types on bad input; all mean "cannot decode"
        raise UndecodableDataset(f"not a DICOM file: {error.__class__.__name__}: {error}") from None
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if not syntax:
        raise UndecodableDataset("the file meta information names no transfer syntax")
    return check_dataset(
        memoryview(data)[stream.tell() :],
        syntax,
        affected_sop_class_uid,
        affected_sop_instance_uid,
        max_inflated_bytes,
    )


@contextmanager
def mapped_dataset(path: Path) -> Iterator[memoryview]:
    """The data set of a file received to disk (after its preamble and file meta), mapped rather than read into
    memory: checking a whole-slide image of hundreds of MB touches only its element headers."""
    with _mapped_file(path) as (_, dataset):
        yield dataset


@contextmanager
def _mapped_file(path: Path) -> Iterator[tuple[Dataset, memoryview]]:
    """The file meta information and the mapped data set of a Part 10 file."""
    with open(path, "rb") as handle:
        try:
            read_preamble(handle, force=False)
            meta = _read_file_meta_info(handle)
        except Exception as error:  # pydicom raises many types on bad input; all mean "cannot decode"
            raise UndecodableDataset(f"not a DICOM file: {error.__class__.__name__}: {error}") from None
        offset = handle.tell()
        if os.fstat(handle.fileno()).st_size <= offset:
            yield meta, memoryview(b"")
            return
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):  # only the pages of element headers, no read-around
            mapped.madvise(mmap.MADV_RANDOM)
        view = memoryview(mapped)
        part = view[offset:]
        try:
            yield meta, part
        finally:
            part.release()
            view.release()
            try:
                mapped.close()
            except BufferError:
                pass  # a traceback still holds a slice: the mapping is closed when that is collected


def check_file(
    path: Path, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES, study_instance_uid: str | None = None
) -> InstanceHeader:
    """A Part 10 file received over HTTP (a part of a STOW-RS request or of a WADO-RS response): checked as a C-STORE
    data set is, its file meta information standing in for the request (the transfer syntax, and the Media Storage
    SOP Class and Instance UIDs the data set must carry); with `study_instance_uid`, the study it must belong to."""
    with _mapped_file(path) as (meta, dataset):
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
        if not syntax:
            raise UndecodableDataset("the file meta information names no transfer syntax")
        if not valid_uid(syntax):
            raise UndecodableDataset(f"the file meta information's transfer syntax is not a UID: {syntax[:80]!r}")
        header = check_dataset(
            dataset,
            syntax,
            str(meta.get("MediaStorageSOPClassUID", "") or "") or None,
            str(meta.get("MediaStorageSOPInstanceUID", "") or "") or None,
            max_inflated_bytes,
        )
    if study_instance_uid is not None and header.study_instance_uid != study_instance_uid:
        raise DatasetInvalid(
            f"StudyInstanceUID {header.study_instance_uid} is not the study the request names ({study_instance_uid})",
            header.study_instance_uid,
        )
    return header


def check_dataset(
    dataset: bytes | memoryview,
    transfer_syntax: str,
    affected_sop_class_uid: str | None,
    affected_sop_instance_uid: str | None,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> InstanceHeader:
    """The encoded data set of a C-STORE (no file meta) in `transfer_syntax`: validate, return its header."""
    syntax = UID(transfer_syntax)
    if syntax.is_deflated:
        dataset = inflate(dataset, max_inflated_bytes)
    walked = walk(dataset, not syntax.is_implicit_VR, syntax.is_little_endian, HEADER_TAGS)
    ds = Dataset(walked.elements)
    ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    try:
        with pydicom_config.disable_value_validation():
            return _header(ds, walked.pixels, syntax, affected_sop_class_uid, affected_sop_instance_uid)
    except (ValueError, TypeError, LookupError, UnicodeError) as error:
        study_uid = _study_uid(ds)
        raise DatasetInvalid(f"header attributes cannot be decoded: {error}", study_uid) from None


def _study_uid(ds: Dataset) -> str:
    try:
        value = str(ds.get("StudyInstanceUID", ""))
    except Exception:  # an undecodable value is no study to record the refusal under
        return ""
    return value if valid_uid(value) else ""


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()[:limit]


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _header(
    ds: Dataset,
    pixels: PixelShape | None,
    syntax: UID,
    affected_sop_class_uid: str | None,
    affected_sop_instance_uid: str | None,
) -> InstanceHeader:
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        raise UndecodableDataset("not a DICOM data set: it has no SOP Class or SOP Instance UID")
    study_uid = _study_uid(ds)
    try:
        return _checked_header(ds, pixels, syntax, (affected_sop_class_uid, affected_sop_instance_uid))
    except DatasetInvalid as error:
        raise DatasetInvalid(str(error), study_uid) from None


def _checked_header(
    ds: Dataset, pixels: PixelShape | None, syntax: UID, affected: tuple[str | None, str | None]
) -> InstanceHeader:
    """The header of a data set whose study is known; `affected` is the request's (SOP Class, SOP Instance)."""
    affected_sop_class_uid, affected_sop_instance_uid = affected
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
    sop_class_uid = str(identifiers["SOPClassUID"])
    sop_instance_uid = str(identifiers["SOPInstanceUID"])
    if affected_sop_class_uid and affected_sop_class_uid != sop_class_uid:
        raise DatasetInvalid(
            f"SOPClassUID of the data set ({sop_class_uid}) differs from the C-STORE request's (or the file meta's) "
            f"({str(affected_sop_class_uid)[:64]})"
        )
    if affected_sop_instance_uid and affected_sop_instance_uid != sop_instance_uid:
        raise DatasetInvalid("SOPInstanceUID of the data set differs from the C-STORE request's (or the file meta's)")
    frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "")
    if frame_of_reference and not valid_uid(frame_of_reference):
        raise DatasetInvalid(f"FrameOfReferenceUID is not a valid UID: {frame_of_reference[:80]!r}")
    _check_pixels(ds, pixels, sop_class_uid, syntax)
    return InstanceHeader(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=str(identifiers["StudyInstanceUID"]),
        series_instance_uid=str(identifiers["SeriesInstanceUID"]),
        transfer_syntax_uid=str(syntax),
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


def _positive(ds: Dataset, keyword: str, default: int | None = None, maximum: int = 2**31) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DatasetInvalid(f"{keyword} is missing or not a number: {str(value)[:20]!r}") from None
    if not 0 < number <= maximum:
        raise DatasetInvalid(f"{keyword} {number} is out of range")
    return number


def _check_pixels(ds: Dataset, pixels: PixelShape | None, sop_class_uid: str, syntax: UID) -> None:
    if pixels is None:
        if sop_class_uid in PIXEL_DATA_REQUIRED:
            raise DatasetInvalid("an image storage instance without pixel data")
        return
    rows = _positive(ds, "Rows", maximum=0xFFFF)
    columns = _positive(ds, "Columns", maximum=0xFFFF)
    bits = _positive(ds, "BitsAllocated", maximum=64)
    if bits not in BITS_ALLOCATED[pixels.keyword]:
        raise DatasetInvalid(f"BitsAllocated {bits} is not valid for {pixels.keyword}")
    # The Image Pixel module's type 1 attributes: without them no reader can interpret the pixels.
    samples = _positive(ds, "SamplesPerPixel", maximum=4)
    frames = _positive(ds, "NumberOfFrames", default=1) if ds.get("NumberOfFrames") not in (None, "") else 1
    if not str(ds.get("PhotometricInterpretation", "") or "").strip():
        raise DatasetInvalid("PhotometricInterpretation is missing")
    if pixels.keyword == "PixelData":
        _positive(ds, "BitsStored", maximum=bits)
        high_bit = ds.get("HighBit")
        if high_bit is None or not 0 <= int(high_bit) < bits:
            raise DatasetInvalid(f"HighBit {high_bit} does not fit BitsAllocated {bits}")
        if ds.get("PixelRepresentation") not in (0, 1):
            raise DatasetInvalid(f"PixelRepresentation is {ds.get('PixelRepresentation')!r}, not 0 or 1")
    if syntax.is_encapsulated:
        if not pixels.encapsulated:
            raise DatasetInvalid(f"native (unencapsulated) {pixels.keyword} under the compressed syntax {syntax}")
        video = str(syntax) in VIDEO_SYNTAXES
        if pixels.fragments < (1 if video else frames):
            raise DatasetInvalid(f"{pixels.fragments} pixel data fragment(s) for {frames} frame(s)")
        return
    if pixels.encapsulated:
        raise DatasetInvalid(f"encapsulated pixel data under the uncompressed syntax {syntax}")
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422" and bits == 8:
        expected = rows * columns * 2 * frames
    else:
        expected = (rows * columns * samples * frames * bits + 7) // 8
    if pixels.length < expected:
        raise DatasetInvalid(f"pixel data holds {pixels.length} bytes, the image needs {expected} (truncated?)")
    if pixels.length > expected + 1:
        raise DatasetInvalid(
            f"pixel data holds {pixels.length} bytes, Rows x Columns x Samples x Bits x Frames imply {expected}"
        )
