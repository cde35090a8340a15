"""The C-STORE fast path: a C-STORE-RQ's P-DATA is parsed where it arrives, its data set streamed to a file
without intermediate copies, the request handed to the store handler and its C-STORE-RSP written back, all on
the association's DUL thread.

pynetdicom takes a C-STORE through its state machine, a queue, the DIMSE provider (the command set decoded into
a pydicom Dataset and converted to a primitive with validated attributes), a second thread, its storage service
class, an event, and back (the response built as a Dataset, encoded by pydicom, fragmented, queued to the first
thread): about 3 ms of CPU per instance on this project's machines, while a C-STORE needs a dozen elements of
an Implicit VR Little Endian command set decoded and seven encoded. Profiled, that was most of bare pynetdicom's
time per instance (docs/performance.md).

Only a C-STORE-RQ with a data set, on an accepted presentation context of a class the SCP serves, takes this
path; every other message (C-ECHO, anything unexpected or malformed) is handed to pynetdicom unchanged, PDU for
PDU, as it arrived. Association negotiation, release, abort and the transport's guards stay pynetdicom's and
`dicom_node.transport`'s.

What the handler gets is a `dicom_node.types.StoreRequest`: the data set is in a file written as pynetdicom's
`STORE_RECV_CHUNKED_DATASET` writes it (128-byte preamble, DICM, File Meta Information, the data set as
received), so the same handler serves both paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicom_node.receiving import write_refusal
from dicom_node.types import StoreRequest

logger = logging.getLogger(__name__)

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
NO_DATA_SET = 0x0101
UNABLE_TO_PROCESS = 0xC211  # pynetdicom's status when a C-STORE handler raises
P_DATA_TF = 0x04
MAX_COMMAND_BYTES = 64 * 1024  # a C-STORE-RQ command set is a few hundred bytes
# A data set up to this size is also kept in memory as it arrives, and checked from there; a larger one is checked
# in its file, mapped (`dicom_node.ingest.mapped_dataset`).
MAX_HELD_BYTES = 4 * 1024 * 1024

_TAG_LENGTH = struct.Struct("<HHL")
_PDV_HEADER = struct.Struct(">LBB")
_PDU_HEADER = struct.Struct(">BBL")


# --- command sets (PS3.7 9.3.1; always Implicit VR Little Endian) -----------------------------------------


def decode_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """The elements of an encoded command set by element number (group 0000 only); ValueError if malformed."""
    elements: dict[int, bytes] = {}
    view = memoryview(data)
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 8:
            raise ValueError("command set element header cut short")
        group, element, length = _TAG_LENGTH.unpack_from(view, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            raise ValueError(f"({group:04X},{element:04X}) of {length} bytes in a command set")
        elements[element] = bytes(view[offset : offset + length])
        offset += length
    return elements


def _us(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _text(elements: dict[int, bytes], element: int) -> str:
    return elements.get(element, b"").decode("ascii", "replace").rstrip("\0 ")


@dataclass(frozen=True)
class StoreCommand:
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str


def store_command(elements: dict[int, bytes]) -> StoreCommand | None:
    """The C-STORE-RQ with a data set these elements encode, or None (another message, or not one this path
    handles: pynetdicom's own path answers it)."""
    if _us(elements, 0x0100) != C_STORE_RQ:
        return None
    message_id, data_set_type = _us(elements, 0x0110), _us(elements, 0x0800)
    if message_id is None or data_set_type is None or data_set_type == NO_DATA_SET:
        return None
    return StoreCommand(message_id, _text(elements, 0x0002), _text(elements, 0x1000))


def _element(element: int, value: bytes) -> bytes:
    return _TAG_LENGTH.pack(0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def encode_store_response(command: StoreCommand, status: int) -> bytes:
    """The C-STORE-RSP command set for `command` (the elements pynetdicom's storage SCP sends)."""
    body = b"".join(
        (
            _element(0x0002, _uid(command.affected_sop_class_uid)),
            _element(0x0100, struct.pack("<H", C_STORE_RSP)),
            _element(0x0120, struct.pack("<H", command.message_id)),
            _element(0x0800, struct.pack("<H", NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x1000, _uid(command.affected_sop_instance_uid)),
        )
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body


def command_pdus(context_id: int, command: bytes, max_pdu_length: int) -> list[bytes]:
    """A command set as P-DATA-TF PDUs of at most `max_pdu_length` bytes (the peer's; 0 is no limit)."""
    room = len(command) if not max_pdu_length else max(1, max_pdu_length - 6)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        control = 0x03 if start + room >= len(command) else 0x01
        pdv = _PDV_HEADER.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_PDU_HEADER.pack(P_DATA_TF, 0, len(pdv)) + pdv)
    return pdus


# --- File Meta Information (PS3.10 7.1; Explicit VR Little Endian) --------------------------------------


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHL", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_preamble_and_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, implementation_uid: str, version: str
) -> bytes:
    """Preamble, DICM prefix and File Meta Information, as pynetdicom writes them before a received data set."""
    name = version.encode("ascii")
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _uid(sop_class_uid)),
            _meta_element(0x0003, b"UI", _uid(sop_instance_uid)),
            _meta_element(0x0010, b"UI", _uid(transfer_syntax)),
            _meta_element(0x0012, b"UI", _uid(implementation_uid)),
            _meta_element(0x0013, b"SH", name + b" " if len(name) % 2 else name),
        )
    )
    return b"\0" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<L", len(body))) + body


# --- the receiver --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastStoreSettings:
    """What the SCP gives the fast path: the handler, the folder data sets are received into and the prefix of
    their file names (the node run's: several nodes may share the folder), the classes."""

    handler: Callable[[StoreRequest], int]
    folder: Path
    prefix: str
    sop_classes: frozenset[str]


@dataclass(frozen=True)
class Context:
    """An accepted presentation context, as the fast path needs it."""

    abstract_syntax: str
    transfer_syntax: str


class StoreReceiver:
    """The C-STORE messages of one association, from P-DATA-TF PDUs to answered C-STOREs.

    `consume(pdu)` takes each P-DATA-TF PDU the peer sends (the whole PDU, header included) and returns the
    PDUs pynetdicom must process instead, in order: none while a C-STORE is being received here; the PDUs of
    a message that turned out to be something else (held while its command set arrived), and every PDU after
    them until a message ends at the end of a PDU. Raises ProtocolError when a C-STORE taken here goes wrong
    half way (a command fragment inside its data set, a PDU that goes on after it): the association is aborted.
    """

    def __init__(
        self,
        settings: FastStoreSettings,
        contexts: Callable[[int], Context | None],
        calling_ae_title: Callable[[], str],
        send: Callable[[bytes], None],
        peer_max_pdu: Callable[[], int],
        implementation: tuple[str, str],
        assoc: object,
    ) -> None:
        self.settings = settings
        self._contexts = contexts
        self._calling = calling_ae_title
        self._send = send
        self._peer_max_pdu = peer_max_pdu
        self._implementation = implementation
        self._assoc = assoc
        self._passing = False  # the current message is pynetdicom's
        self._tracker = _MessageTracker()  # message boundaries while passing
        self._held: list[bytes | bytearray] = []  # PDUs of a message whose command set is still arriving
        self._command = bytearray()
        self._context_id: int | None = None
        self._store: StoreCommand | None = None
        self._descriptor: int | None = None
        self._path: Path | None = None
        self._offset = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._fragments: list[memoryview] | None = None  # the data set's, while it is small (`MAX_HELD_BYTES`)
        self._error: OSError | None = None  # the file system refused the data set's file (ENOSPC, EDQUOT, EIO)

    def consume(self, pdu: bytes | bytearray) -> list[bytes | bytearray]:
        if self._passing:
            self._pass([pdu])
            return [pdu]
        view = memoryview(pdu)
        offset, end = 6, len(view)
        while offset < end:
            if end - offset < 6:
                return self._hand_over(pdu)
            length, context_id, control = _PDV_HEADER.unpack_from(view, offset)
            if length < 2 or length > end - offset - 4:
                return self._hand_over(pdu)
            fragment = view[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if self._store is not None:
                if control & 1 or context_id != self._context_id:
                    raise ProtocolError("a command fragment or another context inside a C-STORE data set")
                self._write(fragment)
                if control & 2:
                    if offset != end:
                        raise ProtocolError("PDVs after the last fragment of a C-STORE data set")
                    self._finish()
                continue
            if not control & 1 or (self._context_id is not None and context_id != self._context_id):
                return self._hand_over(pdu)
            self._context_id = context_id
            self._command += fragment
            if len(self._command) > MAX_COMMAND_BYTES:
                return self._hand_over(pdu)
            if control & 2 and not self._start():
                return self._hand_over(pdu)
        if self._store is None and self._context_id is not None:
            self._held.append(pdu)
        return []

    def close(self) -> None:
        """The association ended: a data set still being received is removed."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
        self._fragments = None

    # --- internals ---

    def _hand_over(self, pdu: bytes | bytearray) -> list[bytes | bytearray]:
        """The message is pynetdicom's: the PDUs held so far and this one, unchanged."""
        held, self._held = self._held + [pdu], []
        self._command, self._context_id = bytearray(), None
        self._passing = True
        self._tracker = _MessageTracker()
        self._pass(held)
        return held

    def _pass(self, pdus: list[bytes | bytearray]) -> None:
        for pdu in pdus:
            if self._tracker.at_message_end(pdu):
                self._passing = False
                self._tracker = _MessageTracker()

    def _start(self) -> bool:
        """The command set is complete: take the message if it is a C-STORE-RQ this path serves."""
        try:
            command = store_command(decode_command(self._command))
        except ValueError:
            return False
        context = self._contexts(self._context_id)
        if command is None or context is None or context.abstract_syntax not in self.settings.sop_classes:
            return False
        self._store = command
        self._command = bytearray()
        self._held = []
        self._path = self.settings.folder / f"{self.settings.prefix}{uuid.uuid4().hex}.dcm"
        self._error = None
        try:
            self._descriptor = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            self._error = error  # the rest of the data set is read and dropped; answered 0xA700
        meta = file_preamble_and_meta(
            command.affected_sop_class_uid, command.affected_sop_instance_uid, context.transfer_syntax,
            *self._implementation,
        )  # fmt: skip
        self._offset = len(meta)
        self._size = 0
        self._digest = hashlib.sha256()
        self._write(memoryview(meta))
        self._fragments = []
        return True

    def _write(self, data: memoryview) -> None:
        if self._descriptor is None:  # refused by the file system: the fragments are dropped
            return
        self._digest.update(data)  # the stored file's SHA-256, without reading it back
        self._size += len(data)
        if self._fragments is not None:
            if self._size - self._offset <= MAX_HELD_BYTES:
                self._fragments.append(data)  # a view of the received PDU: no copy until the data set is whole
            else:
                self._fragments = None
        try:
            while data:
                written = os.write(self._descriptor, data)
                data = data[written:]
        except OSError as error:  # e.g. the disk is full: the partial file goes at once, its space back
            self._error = error
            os.close(self._descriptor)
            self._descriptor = None
            self._path.unlink(missing_ok=True)

    def _refusal(self) -> str | None:
        return None if self._error is None else write_refusal(self._error)

    def _finish(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
        self._descriptor = None
        path, command, context_id = self._path, self._store, self._context_id
        held = b"".join(self._fragments) if self._fragments is not None else None
        self._path, self._store, self._context_id, self._fragments = None, None, None, None
        context = self._contexts(context_id)
        request = StoreRequest(
            assoc=self._assoc,
            calling_ae_title=self._calling(),
            message_id=command.message_id,
            affected_sop_class_uid=command.affected_sop_class_uid,
            affected_sop_instance_uid=command.affected_sop_instance_uid,
            abstract_syntax=context.abstract_syntax,
            transfer_syntax=context.transfer_syntax,
            dataset_path=path,
            dataset_offset=self._offset,
            sha256=self._digest.hexdigest(),
            size=self._size,
            dataset=held,
            receive_error=self._refusal(),
        )
        try:
            status = self.settings.handler(request)
        except Exception:
            logger.exception("exception in the C-STORE handler")
            status = UNABLE_TO_PROCESS
        finally:
            path.unlink(missing_ok=True)  # moved into the store by the handler, or refused
        for pdu in command_pdus(context_id, encode_store_response(command, status), self._peer_max_pdu()):
            self._send(pdu)


class _MessageTracker:
    """Follows DIMSE message boundaries through PDUs handed to pynetdicom, so that the fast path can take
    the next message that starts at a PDU boundary."""

    def __init__(self) -> None:
        self._command = bytearray()
        self._data_follows = False
        self._lost = False  # malformed: pynetdicom keeps the association to itself

    def at_message_end(self, pdu: bytes | bytearray) -> bool:
        view = memoryview(pdu)
        offset, end, ended = 6, len(view), False
        while offset < end and not self._lost:
            if end - offset < 6:
                self._lost = True
                break
            length, _, control = _PDV_HEADER.unpack_from(view, offset)
            if length < 2 or length > end - offset - 4:
                self._lost = True
                break
            fragment = view[offset + 6 : offset + 4 + length]
            offset += 4 + length
            ended = False
            if self._data_follows:
                if control & 1:
                    self._lost = True
                elif control & 2:
                    self._data_follows, ended = False, True
                continue
            if not control & 1:
                self._lost = True
                continue
            self._command += fragment
            if control & 2:
                try:
                    data_set_type = _us(decode_command(self._command), 0x0800)
                except ValueError:
                    data_set_type = None
                self._command = bytearray()
                if data_set_type is None:
                    self._lost = True
                elif data_set_type == NO_DATA_SET:
                    ended = True
                else:
                    self._data_follows = True
        return ended and not self._lost


class ProtocolError(Exception):
    """The peer broke the DIMSE protocol in the middle of a C-STORE: the association is aborted."""
