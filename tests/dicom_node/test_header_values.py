"""The header values decoded directly (`dicom_node.ingest.plain_values`) equal pydicom's, or are left to it.

Real files from ../shared/data (sts_002/003 PET/CT, the SUV reference series, a real reader's SEG and SR, a
real whole-slide image) in their own syntax and re-encoded in the other uncompressed ones, and hand-made
edge values (padding, several values, non-ASCII text, numbers pydicom reads leniently)."""

from __future__ import annotations

import pytest
from pydicom import config, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.encoding import walk
from dicom_node.ingest import HEADER_KEYWORDS, HEADER_TAGS, plain_values
from tests.conftest import SHARED_DATA as DATA

REAL_FILES = [
    *sorted((DATA / "sts_002" / "PET").glob("*.dcm"))[:2],
    *sorted((DATA / "sts_003" / "CT").glob("*.dcm"))[:2],
    *sorted((DATA / "suv_dro").glob("DRO_*/PT/*.dcm"))[:3],
    DATA / "qin_hn_expert_objects" / "seg.dcm",
    DATA / "qin_hn_expert_objects" / "sr.dcm",
    *sorted((DATA / "wsi_cmu1_small").rglob("*.dcm"))[:1],
]


def _pydicom_values(elements: dict, implicit: bool, little: bool) -> dict[str, object]:
    ds = Dataset(elements)
    ds.set_original_encoding(implicit, little)
    with config.disable_value_validation():
        return {keyword: ds.get(keyword) for keyword in HEADER_KEYWORDS if keyword in ds}


def _encoded(ds: Dataset, syntax: UID) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _check(encoded: bytes, syntax: UID) -> bool:
    """True when the direct decoding was used (and equals pydicom's), False when left to pydicom."""
    walked = walk(encoded, not syntax.is_implicit_VR, syntax.is_little_endian, HEADER_TAGS)
    plain = plain_values(walked.elements, syntax.is_little_endian)
    if plain is None:
        return False
    expected = _pydicom_values(walked.elements, syntax.is_implicit_VR, syntax.is_little_endian)
    expected.pop("SpecificCharacterSet", None)
    assert plain == expected
    return True


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_real_headers_decode_as_pydicom_decodes_them(path, syntax) -> None:
    ds = dcmread(path)
    header = Dataset()
    for tag in HEADER_TAGS:
        if tag in ds:
            header.add(ds[tag])
    assert _check(_encoded(header, syntax), syntax)


def _raw(keyword: str, vr: str, value: bytes, implicit: bool) -> dict:
    tag = int(Tag(keyword))
    return {tag: RawDataElement(tag, None if implicit else vr, len(value), value, 0, implicit, True)}


EDGE_VALUES = [
    ("PatientID", "LO", [b"", b"AB ", b" AB", b"AB\0", b"A\\B", b"M\xfcller", b"\x1b$B"]),
    ("StudyInstanceUID", "UI", [b"", b"1.2\0", b"1.2 ", b" 1.2", b"1.2\\3"]),
    ("SeriesNumber", "IS", [b"", b"1 ", b" 1", b"1.0", b"+1", b"-3", b"x", b"1\\2"]),
    ("Rows", "US", [b"", b"\x01\x00", b"\x01\x00\x02\x00"]),
    ("Modality", "CS", [b"", b"PT", b" PT "]),
    ("StudyDate", "DA", [b"", b"20200101"]),
]


@pytest.mark.parametrize("keyword,vr,values", EDGE_VALUES, ids=[e[0] for e in EDGE_VALUES])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_edge_values_decode_as_pydicom_decodes_them_or_are_left_to_it(keyword, vr, values, implicit) -> None:
    direct = 0
    for value in values:
        elements = _raw(keyword, vr, value, implicit)
        plain = plain_values(elements, True)
        if plain is not None:
            assert plain == _pydicom_values(elements, implicit, True), value
            direct += 1
    assert direct >= 2  # the plain cases do take the direct path


def test_several_values_non_ascii_and_odd_vrs_are_left_to_pydicom() -> None:
    assert plain_values(_raw("PatientID", "LO", b"A\\B", False), True) is None
    assert plain_values(_raw("PatientID", "LO", "Müller".encode("latin-1"), False), True) is None
    assert plain_values(_raw("Rows", "US", b"\x01\x00\x02\x00", False), True) is None
    assert plain_values(_raw("Rows", "SS", b"\x01\x00", False), True) is None
    assert plain_values(_raw("SeriesNumber", "IS", b"1.0", False), True) is None
