"""DICOM instances in multipart/related bodies over HTTP (PS3.18 8.6.1.2): the parts of a STOW-RS request and of
a WADO-RS response are written to files in the store's incoming/ folder as they stream in (python-multipart's
streaming parser: memory stays bounded whatever the size), then each is checked as a C-STORE data set is
(`dicom_node.ingest.check_file`) and stored durably (`storage.store.InstanceStore.store_received`: fsync'd and
indexed before it counts as stored). A failure of one part is that part's status, from the one status table
(`dicom_node.status`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pydicom.filereader import read_file_meta_info
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from dicom_node import status
from dicom_node.errors import BadMultipart, ReceiveError, UndecodableDataset
from dicom_node.ingest import check_file, valid_uid
from storage.errors import OutOfResources, StorageError
from storage.store import InstanceStore

logger = logging.getLogger(__name__)

DICOM = "application/dicom"


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header's media type (lower case) and its parameters (names lower case, values unquoted)."""
    message = Message()
    message["Content-Type"] = value
    params = message.get_params() or []
    return message.get_content_type(), {str(k).lower(): str(v) for k, v in params[1:]}


@dataclass(frozen=True)
class ReceivedPart:
    path: Path  # in the store's incoming/ folder until stored (moved) or discarded
    content_type: str  # the part's media type, lower case, without parameters
    size: int


class PartFiles:
    """Feed a multipart body chunk by chunk; each part goes to its own file in `folder`. Use as a context manager:
    on leaving, every part file still there (not stored) is removed."""

    def __init__(self, boundary: str, folder: Path, max_parts: int = 100_000) -> None:
        self.folder = folder
        self.max_parts = max_parts
        self.parts: list[ReceivedPart] = []
        self._complete = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0
        self._paths: list[Path] = []
        callbacks = {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._open,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._ended,
        }
        try:
            self._parser = MultipartParser(boundary.encode("latin-1"), callbacks)
        except (ValueError, UnicodeEncodeError) as error:
            raise BadMultipart(f"unusable boundary: {error}") from None

    def __enter__(self) -> PartFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
        for path in self._paths:
            path.unlink(missing_ok=True)

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise BadMultipart(f"not a well-formed multipart body: {error}") from None
        except OSError as error:
            raise OutOfResources(f"cannot write a received part: {error.strerror}") from None

    def finish(self) -> list[ReceivedPart]:
        """The parts, once the body ended with its closing boundary; BadMultipart when it was cut short."""
        try:
            self._parser.finalize()
        except MultipartParseError as error:
            raise BadMultipart(f"not a well-formed multipart body: {error}") from None
        if not self._complete:
            raise BadMultipart("the body ends before its closing boundary (cut short?)")
        return list(self.parts)

    def _begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise BadMultipart(f"more than {self.max_parts} parts")
        self._headers = {}

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _open(self) -> None:
        # tmp*.dcm in incoming/: a file left by a crash is removed at start-up (`FileLayout.remove_stale_partials`).
        self._path = self.folder / f"tmp{uuid.uuid4().hex}.dcm"
        self._paths.append(self._path)
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed at the part's end or on leaving
        self._size = 0

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._file.write(data[start:end])
        self._size += end - start

    def _end(self) -> None:
        self._file.close()
        self._file = None
        content_type = media_type(self._headers.get("content-type", DICOM))[0]
        self.parts.append(ReceivedPart(self._path, content_type, self._size))

    def _ended(self) -> None:
        self._complete = True


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: stored (status 0x0000) or refused with a status and the reason."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    status: int
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status == status.SUCCESS


def store_part(
    store: InstanceStore, part: ReceivedPart, calling: str, max_inflated_bytes: int, study_uid: str | None = None
) -> PartOutcome:
    """Check a received part as a C-STORE data set and store it durably; with `study_uid` it must be of that study."""
    header = None
    try:
        if part.content_type != DICOM:
            raise UndecodableDataset(f"a part of type {part.content_type[:64]!r}, not {DICOM}")
        header = check_file(part.path, max_inflated_bytes, study_uid)
        store.store_received(header, part.path, calling)
    except (ReceiveError, StorageError) as error:
        code = status.store_status_for(error)
        if header is not None:  # checked, then refused by the store (the file is gone by now)
            sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
        else:
            sop_class, sop_instance = _meta_uids(part.path)
        part.path.unlink(missing_ok=True)
        return PartOutcome(sop_class, sop_instance, getattr(error, "study_instance_uid", ""), code, str(error))
    return PartOutcome(header.sop_class_uid, header.sop_instance_uid, header.study_instance_uid, status.SUCCESS)


def _meta_uids(path: Path) -> tuple[str, str]:
    """The SOP Class and Instance UIDs a refused part's file meta names, where they are valid UIDs."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # pydicom raises many types on bad input: then nothing is named
        return "", ""
    found = (str(meta.get("MediaStorageSOPClassUID", "") or ""), str(meta.get("MediaStorageSOPInstanceUID", "") or ""))
    return tuple(uid if valid_uid(uid) else "" for uid in found)  # type: ignore[return-value]
