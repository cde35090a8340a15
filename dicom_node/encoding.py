"""Structural check of an encoded DICOM data set (PS3.5 7): every element of every nested item is walked,
without decoding values, so that nothing is acknowledged that a reader cannot parse.

What is checked, per element: the header fits; an explicit VR is one of the standard VRs; the value length
fits inside its enclosing data set, item or sequence; undefined lengths only where the standard allows them
(sequences, UN holding an implicit sequence, encapsulated Pixel Data) and properly terminated by their
delimiters; item and delimiter tags only inside sequences, delimiters of length 0; numeric VRs (US, SS, UL,
SL, FL, FD, AT, SV, UV) have a length that is a multiple of their width; nesting at most `MAX_DEPTH`.
The shape of the top-level pixel data (native length or encapsulated fragments) is returned for the
semantic checks that follow (`dicom_node.ingest`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary, dictionary_VR, private_dictionary_VR
from pydicom.dataelem import RawDataElement

from dicom_node.errors import DatasetTooLarge, UndecodableDataset

MAX_DEPTH = 24
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
SHORT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip
VR_NAMES = {vr: vr.decode("ascii") for vr in SHORT_VRS | LONG_VRS}
WIDTH = {
    "US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8,
    "US or SS": 2, "US or OW": 2, "US or SS or OW": 2,
}  # fmt: skip
LUT_DATA, LUT_DESCRIPTOR = 0x00283006, 0x00283002


def _vr_of(tag: int, creators: dict[int, str]) -> str:
    """The VR pydicom gives an element without one (implicit VR) or with UN: the data dictionary's, for a private
    tag the private dictionary's under its creator (PS3.5 7.8), a group length UL, else UN."""
    entry = DicomDictionary.get(tag)
    if entry is not None:
        return entry[0]
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        if 0x0010 <= element <= 0x00FF:
            return "LO"  # private creator
        creator = creators.get(group << 16 | element >> 8)
        if creator and element & 0xFF00:
            try:
                return private_dictionary_VR(tag, creator)
            except KeyError:
                return "UN"
        return "UN"
    if element == 0:
        return "UL"  # group length
    try:
        return dictionary_VR(tag)  # repeating groups (50xx, 60xx)
    except KeyError:
        return "UN"


@dataclass(frozen=True)
class PixelShape:
    """The top-level pixel data element as encoded."""

    keyword: str  # PixelData, FloatPixelData or DoubleFloatPixelData
    encapsulated: bool
    length: int  # value length of a native element; total fragment bytes of an encapsulated one
    fragments: int  # encapsulated: data fragments after the Basic Offset Table item
    offset_table_length: int


class _Walker:
    def __init__(self, buffer: bytes | memoryview, explicit: bool, little: bool, wanted: frozenset[int]) -> None:
        self.buffer = buffer
        self.explicit = explicit
        self.little = little
        self.wanted = wanted
        self.found: dict[int, RawDataElement] = {}
        prefix = "<" if little else ">"
        self.tag_length = struct.Struct(prefix + "HHL")  # group, element, 4-byte length (implicit, items)
        self.tag_vr_length = struct.Struct(prefix + "HH2sH")  # group, element, VR, 2-byte length (explicit)
        self.short = struct.Struct(prefix + "H")
        self.long = struct.Struct(prefix + "L")
        self.pixels: PixelShape | None = None

    def fail(self, offset: int, message: str) -> UndecodableDataset:
        return UndecodableDataset(f"corrupt encoding at byte {offset}: {message}")

    def dataset(self, offset: int, end: int, depth: int, until_item_end: bool) -> int:
        """Walk elements from `offset`; stop at `end`, or (undefined-length item) at its delimiter."""
        buffer, explicit = self.buffer, self.explicit
        dictionary_get, width_get = DicomDictionary.get, WIDTH.get
        unpack_tag_length, unpack_explicit = self.tag_length.unpack_from, self.tag_vr_length.unpack_from
        unpack_long = self.long.unpack_from
        wanted, found, little = self.wanted, self.found, self.little
        if depth > MAX_DEPTH:
            raise self.fail(offset, f"sequences nested deeper than {MAX_DEPTH}")
        creators: dict[int, str] = {}  # private creators of this data set (their block, as (gggg,00xx))
        lut_descriptor = False
        while True:
            if offset == end:
                if until_item_end:
                    raise self.fail(offset, "item of undefined length without its delimiter")
                return offset
            if end - offset < 8:
                raise self.fail(offset, "element header cut short")
            if explicit:
                group, element, vr, length = unpack_explicit(buffer, offset)
            else:
                group, element, length = unpack_tag_length(buffer, offset)
            tag = group << 16 | element
            if group == 0xFFFE:
                length = unpack_tag_length(buffer, offset)[2]  # items and delimiters: a 4-byte length, no VR
                if tag == ITEM_END and until_item_end:
                    if length != 0:
                        raise self.fail(offset, "item delimiter with a non-zero length")
                    return offset + 8
                raise self.fail(offset, f"item or delimiter tag ({group:04X},{element:04X}) outside a sequence")
            if explicit:
                if vr in SHORT_VRS:
                    offset += 8
                elif vr in LONG_VRS:
                    if end - offset < 12:
                        raise self.fail(offset, "element header cut short")
                    length = unpack_long(buffer, offset + 8)[0]
                    offset += 12
                else:
                    raise self.fail(offset, f"({group:04X},{element:04X}) has an invalid VR {vr!r}")
                vr_name = VR_NAMES[vr]
                if vr_name == "UN" and length != UNDEFINED and (group & 1 or length < 0xFFFF):
                    vr_name = _vr_of(tag, creators)  # pydicom reads a known tag sent as UN by its own VR
                    if vr_name == "SQ":  # ... and a sequence sent as UN in implicit VR (PS3.5 6.2.2)
                        if length > end - offset:
                            raise self.fail(offset, f"({group:04X},{element:04X}) declares {length} bytes")
                        self.sequence(offset, offset + length, depth + 1, False)
                        offset += length
                        continue
            else:
                entry = dictionary_get(tag)  # `_vr_of`, inlined for the common case of a standard tag
                vr_name = entry[0] if entry is not None else _vr_of(tag, creators)
                offset += 8
            if length == UNDEFINED:
                offset = self.undefined(tag, vr_name, offset, end, depth)
                continue
            if length > end - offset:
                raise self.fail(offset, f"({group:04X},{element:04X}) declares {length} bytes, {end - offset} remain")
            if vr_name == "SQ":
                self.sequence(offset, offset + length, depth + 1, explicit)
            else:
                if group & 1 and 0x0010 <= element <= 0x00FF:
                    creators[tag] = bytes(buffer[offset : offset + length]).decode("latin-1").strip(" \x00")
                elif tag == LUT_DESCRIPTOR:
                    lut_descriptor = True
                elif tag == LUT_DATA and not explicit and not lut_descriptor:
                    raise self.fail(offset, "LUT Data (0028,3006) without its LUT Descriptor: its VR is undecidable")
                width = width_get(vr_name)
                if width and length % width:
                    raise self.fail(offset, f"({group:04X},{element:04X}) {vr_name} of {length} bytes")
                if depth == 0:
                    if tag in wanted:
                        value = bytes(buffer[offset : offset + length])
                        found[tag] = RawDataElement(
                            tag, vr_name if explicit else None, length, value, offset, not explicit, little
                        )
                    elif tag in PIXEL_TAGS:
                        self.pixels = PixelShape(PIXEL_TAGS[tag], False, length, 0, 0)
            offset += length

    def undefined(self, tag: int, vr_name: str, offset: int, end: int, depth: int) -> int:
        if tag == 0x7FE00010 and vr_name in ("OB", "OW", "OB or OW", "UN"):
            return self.encapsulated(offset, end, depth)
        if vr_name == "SQ":
            return self.sequence(offset, None, depth + 1, self.explicit, end)
        if vr_name == "UN":  # a sequence of unknown VR: its items are encoded in implicit VR (PS3.5 6.2.2)
            return self.sequence(offset, None, depth + 1, False, end)
        raise self.fail(offset, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr_name} has an undefined length")

    def sequence(self, offset: int, end: int | None, depth: int, explicit: bool, limit: int | None = None) -> int:
        """Items from `offset` to `end` (defined length) or to the sequence delimiter (end None)."""
        stop = end if end is not None else limit
        saved, self.explicit = self.explicit, explicit
        try:
            while True:
                if end is not None and offset == end:
                    return offset
                if stop - offset < 8:
                    raise self.fail(offset, "sequence cut short (no item or delimiter)")
                group, element, length = self.tag_length.unpack_from(self.buffer, offset)
                tag = group << 16 | element
                offset += 8
                if tag == SEQUENCE_END and end is None:
                    if length != 0:
                        raise self.fail(offset, "sequence delimiter with a non-zero length")
                    return offset
                if tag != ITEM:
                    raise self.fail(offset - 8, f"({group:04X},{element:04X}) where a sequence item was expected")
                if length == UNDEFINED:
                    offset = self.dataset(offset, stop, depth, until_item_end=True)
                else:
                    if length > stop - offset:
                        raise self.fail(offset, f"item declares {length} bytes, {stop - offset} remain")
                    self.dataset(offset, offset + length, depth, until_item_end=False)
                    offset += length
        finally:
            self.explicit = saved

    def encapsulated(self, offset: int, end: int, depth: int) -> int:
        """Encapsulated pixel data (PS3.5 A.4): the Basic Offset Table item, fragments, the delimiter."""
        items, total, table = 0, 0, 0
        while True:
            if end - offset < 8:
                raise self.fail(offset, "encapsulated pixel data without its sequence delimiter")
            group, element, length = self.tag_length.unpack_from(self.buffer, offset)
            tag = group << 16 | element
            offset += 8
            if tag == SEQUENCE_END:
                if length != 0:
                    raise self.fail(offset, "sequence delimiter with a non-zero length")
                break
            if tag != ITEM or length == UNDEFINED:
                raise self.fail(offset - 8, "encapsulated pixel data holds something other than items")
            if length > end - offset:
                raise self.fail(offset, f"pixel data fragment declares {length} bytes, {end - offset} remain")
            if items == 0:
                if length % 4:
                    raise self.fail(offset, "basic offset table of a length not a multiple of 4")
                table = length
            else:
                total += length
            items += 1
            offset += length
        if items == 0:
            raise self.fail(offset, "encapsulated pixel data without a basic offset table item")
        if depth == 0:
            self.pixels = PixelShape("PixelData", True, total, items - 1, table)
        return offset


@dataclass(frozen=True)
class Walked:
    pixels: PixelShape | None
    elements: dict[int, RawDataElement]  # the wanted top-level elements, undecoded


def walk(dataset: bytes | memoryview, explicit: bool, little: bool, wanted: frozenset[int] = frozenset()) -> Walked:
    """Raise UndecodableDataset where the encoding is broken; return the top-level pixel data's shape and the
    wanted top-level elements (tags as ints; not sequences or pixel data) as raw elements."""
    walker = _Walker(dataset, explicit, little, wanted)
    walker.dataset(0, len(dataset), 0, until_item_end=False)
    return Walked(walker.pixels, walker.found)


def inflate(deflated: bytes | memoryview, limit: int) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set (raw deflate, PS3.5 A.5) to at most `limit`
    bytes; more is refused before it is allocated (a small stream can expand a thousandfold)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(deflated, limit + 1)
    except zlib.error as error:
        raise UndecodableDataset(f"deflated data set cannot be inflated: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise DatasetTooLarge(f"deflated data set inflates to more than {limit} bytes (the limit)")
    return data
