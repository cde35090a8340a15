"""What is acknowledged can be read: crafted data sets against the receive-edge checks, directly and through
a running SCP. The seed is a real PET slice of sts_002 (TCIA Soft-tissue-Sarcoma, IBSI/MIRP; CC BY 3.0);
each case edits it the way a broken or hostile sender would."""

from __future__ import annotations

import copy
import resource
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from benchmarks.fuzz_scp import RawSender
from dicom_node import status
from dicom_node.errors import DatasetInvalid, DatasetTooLarge, UndecodableDataset
from dicom_node.ingest import check_dataset, parse_received
from dicom_node.scp import StorageSCP
from storage.audit import AuditTrail
from storage.database import Database
from storage.files import FileLayout
from storage.store import InstanceStore
from tests.conftest import STS_002

PET = PositronEmissionTomographyImageStorage


@pytest.fixture(scope="module")
def pet() -> pydicom.Dataset:
    return pydicom.dcmread(sorted((STS_002 / "PET").glob("0*.dcm"))[10])


def encode(ds: pydicom.Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax != ExplicitVRBigEndian
    buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def check(data: bytes, syntax: str = ExplicitVRLittleEndian, sop_class: str = PET, uid: str | None = None, **kw):
    return check_dataset(data, syntax, sop_class, uid, **kw)


def edited(pet: pydicom.Dataset, **changes) -> pydicom.Dataset:
    ds = copy.deepcopy(pet)
    for keyword, value in changes.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    return ds


# --- valid data sets in every uncompressed syntax --------------------------------------------------------


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_a_real_pet_slice_passes_in_every_uncompressed_syntax(pet, syntax) -> None:
    ds = copy.deepcopy(pet)
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = pet.pixel_array.astype(">i2" if pet.PixelRepresentation else ">u2").tobytes()
    header = check(encode(ds, syntax), syntax)
    assert header.sop_instance_uid == pet.SOPInstanceUID and header.patient_id == pet.PatientID


def test_real_files_of_every_shared_series_pass() -> None:
    for path in sorted(STS_002.rglob("*.dcm")):
        assert parse_received(path.read_bytes()).sop_instance_uid


# --- broken encodings: cannot decode (0xC210) ------------------------------------------------------------


def _with_length(data: bytes, tag_group: int, tag_element: int, new_length: int) -> bytes:
    """Explicit VR LE: replace the 2-byte length of the first short-VR element with this tag."""
    marker = struct.pack("<HH", tag_group, tag_element)
    at = data.index(marker)
    return data[: at + 6] + struct.pack("<H", new_length) + data[at + 8 :]


def test_a_length_larger_than_the_rest_of_the_data_is_refused(pet) -> None:
    data = encode(pet)
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    broken = data[: at + 8] + struct.pack("<L", len(data)) + data[at + 12 :]
    with pytest.raises(UndecodableDataset, match="declares"):
        check(broken)


def test_a_length_inside_a_nested_item_that_overruns_it_is_refused(pet) -> None:
    ds = copy.deepcopy(pet)
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    ds.AnatomicRegionSequence = Sequence([item])
    data = encode(ds)
    broken = _with_length(data, 0x0008, 0x0100, 200)  # Code Value (in the item) claims 200 bytes
    with pytest.raises(UndecodableDataset):
        check(broken)


@pytest.mark.parametrize(
    "name, payload",
    [
        ("empty", b""),
        ("not DICOM", b"this is not a DICOM data set at all" * 10),
        ("item tag at top level", struct.pack("<HHL", 0xFFFE, 0xE000, 0)),
        ("header cut short", struct.pack("<HH", 0x0008, 0x0016) + b"UI"),
        ("invalid VR", struct.pack("<HH", 0x0008, 0x0016) + b"zz" + struct.pack("<H", 2) + b"1\x00"),
        ("undefined length on text", struct.pack("<HH", 0x0008, 0x0016) + b"UT\x00\x00" + b"\xff" * 4),
        ("US of 3 bytes", struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<H", 3) + b"\x01\x02\x03"),
        (
            "sequence without delimiter",
            struct.pack("<HH", 0x0008, 0x1115) + b"SQ\x00\x00" + b"\xff" * 4 + struct.pack("<HHL", 0xFFFE, 0xE000, 0),
        ),
        (
            "delimiter of non-zero length",
            struct.pack("<HH", 0x0008, 0x1115) + b"SQ\x00\x00" + b"\xff" * 4 + struct.pack("<HHL", 0xFFFE, 0xE0DD, 4),
        ),
    ],
)
def test_broken_encodings_are_refused(name, payload) -> None:
    with pytest.raises(UndecodableDataset):
        check(payload)


def test_sequences_nested_a_hundred_deep_are_refused() -> None:
    inner = b""
    for _ in range(100):
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\x00\x00" + struct.pack("<L", len(item)) + item
    with pytest.raises(UndecodableDataset, match="nested deeper"):
        check(inner)


def test_a_corrupt_deflate_stream_is_refused(pet) -> None:
    data = bytearray(encode(pet, DeflatedExplicitVRLittleEndian))
    data[10:30] = b"\xff" * 20
    with pytest.raises((UndecodableDataset, DatasetInvalid)):
        check(bytes(data), DeflatedExplicitVRLittleEndian)


def test_a_deflate_bomb_is_refused_before_it_is_inflated() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = compressor.compress(b"\x00" * (256 * 1024 * 1024)) + compressor.flush()
    assert len(bomb) < 300_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DatasetTooLarge, match="inflates to more than"):
        check(bomb, DeflatedExplicitVRLittleEndian, max_inflated_bytes=8 * 1024 * 1024)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"peak memory grew by {grown_mb:.0f} MB"


# --- decodable but wrong: data set does not match (0xA900) -----------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"Rows": 0}, "Rows"),
        ({"Columns": 0}, "Columns"),
        ({"BitsAllocated": 0}, "BitsAllocated"),
        ({"BitsAllocated": 12}, "BitsAllocated"),
        ({"BitsStored": 32}, "BitsStored"),
        ({"BitsStored": None}, "BitsStored"),
        ({"HighBit": 40}, "HighBit"),
        ({"PixelRepresentation": None}, "PixelRepresentation"),
        ({"SamplesPerPixel": None}, "SamplesPerPixel"),
        ({"PhotometricInterpretation": None}, "PhotometricInterpretation"),
        ({"SamplesPerPixel": 0}, "SamplesPerPixel"),
        ({"NumberOfFrames": 0}, "NumberOfFrames"),
        ({"Rows": None}, "Rows"),
        ({"PixelData": None}, "without pixel data"),
    ],
)
def test_image_attributes_that_do_not_fit_are_refused(pet, changes, message) -> None:
    with pytest.raises(DatasetInvalid, match=message):
        check(encode(edited(pet, **changes)))


def test_pixel_data_of_another_length_than_the_image_implies_is_refused(pet) -> None:
    with pytest.raises(DatasetInvalid, match="the image needs"):
        check(encode(edited(pet, PixelData=pet.PixelData[:-2])))
    with pytest.raises(DatasetInvalid, match="imply"):
        check(encode(edited(pet, PixelData=pet.PixelData + b"\x00" * 8)))


def test_a_data_set_of_another_sop_class_than_the_request_is_refused(pet) -> None:
    with pytest.raises(DatasetInvalid, match="differs from the C-STORE request"):
        check(encode(edited(pet, SOPClassUID=MRImageStorage)))


def test_uncompressed_pixels_under_a_jpeg_syntax_are_refused(pet) -> None:
    with pytest.raises(DatasetInvalid, match="native"):
        check(encode(pet), JPEGBaseline8Bit)


def test_encapsulated_pixels_under_an_uncompressed_syntax_are_refused(pet) -> None:
    ds = copy.deepcopy(pet)
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    with pytest.raises(DatasetInvalid, match="encapsulated pixel data under the uncompressed"):
        check(encode(ds))


def test_fewer_fragments_than_frames_are_refused(pet) -> None:
    ds = copy.deepcopy(pet)
    ds.NumberOfFrames = 3
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9"] * 2)
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    with pytest.raises(DatasetInvalid, match="2 pixel data fragment"):
        check(encode(ds), JPEGBaseline8Bit)
    ds.NumberOfFrames = 2
    assert check(encode(ds), JPEGBaseline8Bit).sop_instance_uid == pet.SOPInstanceUID


# --- through the SCP: the statuses a sender sees ---------------------------------------------------------


@pytest.fixture
def scp_port(make_settings):
    settings = make_settings(node={"max_inflated_mb": 8})
    database = Database(settings.database_url)
    layout = FileLayout(settings.storage.root)
    scp = StorageSCP(settings.node, settings.peers, InstanceStore(database, layout), AuditTrail(database, layout.spool))
    port, _ = scp.start(port=0)
    yield port
    scp.stop()
    database.dispose()


def test_statuses_through_the_scp(scp_port: int, pet) -> None:
    sender = RawSender(scp_port, calling="TESTSCU")
    try:
        uid = pet.SOPInstanceUID
        uids = [uid] + [generate_uid() for _ in range(5)]
        assert sender.store(PET, uid, ExplicitVRLittleEndian, encode(pet)) == status.SUCCESS
        mr = encode(edited(pet, SOPClassUID=MRImageStorage))
        assert sender.store(PET, uid, ExplicitVRLittleEndian, mr) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        zero_rows = encode(edited(pet, Rows=0, SOPInstanceUID=uids[1]))
        assert sender.store(PET, uids[1], ExplicitVRLittleEndian, zero_rows) == 0xA900
        truncated = encode(edited(pet, SOPInstanceUID=uids[2]))[:-1000]
        assert sender.store(PET, uids[2], ExplicitVRLittleEndian, truncated) == status.CANNOT_DECODE
        native_as_jpeg = encode(edited(pet, SOPInstanceUID=uids[3]))
        assert sender.store(PET, uids[3], JPEGBaseline8Bit, native_as_jpeg) == 0xA900
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        bomb = compressor.compress(b"\x00" * (64 * 1024 * 1024)) + compressor.flush()
        assert sender.store(PET, uids[4], DeflatedExplicitVRLittleEndian, bomb) == status.OUT_OF_RESOURCES
        deflated = encode(edited(pet, SOPInstanceUID=uids[5]), DeflatedExplicitVRLittleEndian)
        assert sender.store(PET, uids[5], DeflatedExplicitVRLittleEndian, deflated) == status.SUCCESS
    finally:
        sender.close()


def test_request_sop_class_must_match_its_presentation_context(scp_port: int, pet, tmp_path: Path) -> None:
    """A C-STORE naming MR in a PET presentation context: refused, the association goes on."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    sender = RawSender(scp_port, calling="TESTSCU")
    try:
        assoc = sender._assoc(PET, ExplicitVRLittleEndian)
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            pass
        request = C_STORE()
        request.MessageID, request.Priority = 7, 2
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = MRImageStorage, pet.SOPInstanceUID
        request.DataSet = BytesIO(encode(edited(pet, SOPClassUID=MRImageStorage)))
        assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
        _, response = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        assert int(response.Status) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert sender.store(PET, pet.SOPInstanceUID, ExplicitVRLittleEndian, encode(pet)) == status.SUCCESS
    finally:
        sender.close()
