"""The file pynetdicom writes a C-STORE data set to as its PDUs arrive (`_config.STORE_RECV_CHUNKED_DATASET`).

pynetdicom opens it (as it would a `NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`), writes each
fragment of the data set and flushes, all in the association's reader thread. A write the file system refuses
there (ENOSPC, EDQUOT, EIO) would end the association, and every instance after it would get no status. A
`ReceivingFile` keeps the refusal instead (`error`): the partial file is removed at once (its space back), the
rest of the data set is read and dropped, and the C-STORE handler answers Out of Resources for that instance;
the association goes on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class ReceivingFile:
    def __init__(self, folder: Path, prefix: str, *, suffix: str = ".dcm", **_: object) -> None:
        self.error: OSError | None = None  # the write the file system refused, if it did
        self.file = self  # pynetdicom flushes `file` after each fragment
        try:
            descriptor, self.name = tempfile.mkstemp(suffix, prefix, folder)
        except OSError as error:  # not even an empty file: nothing to remove later
            self.name = str(Path(folder) / f"{prefix}not-created{suffix}")
            self._handle = None
            self.error = error
            return
        self._handle = os.fdopen(descriptor, "wb")

    def write(self, data: bytes) -> int:
        if self._handle is not None:
            try:
                self._handle.write(data)
            except OSError as error:
                self._fail(error)
        return len(data)

    def flush(self) -> None:
        if self._handle is not None:
            try:
                self._handle.flush()
            except OSError as error:
                self._fail(error)

    def close(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.close()
        except OSError as error:
            self._fail(error)

    def discard(self) -> None:
        """The data set will not be answered (its association ended first): the file goes."""
        self.close()
        Path(self.name).unlink(missing_ok=True)

    def _fail(self, error: OSError) -> None:
        self.error = self.error or error
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass  # flushing what it buffered fails the same way; the file is removed next
        Path(self.name).unlink(missing_ok=True)

    def refusal(self) -> str:
        """Why the data set could not be received, for the C-STORE answer and the log."""
        return write_refusal(self.error)


def write_refusal(error: OSError | None) -> str:
    """Why a data set could not be received to incoming/ (the file system refused its file)."""
    what = os.strerror(error.errno) if error is not None and error.errno else str(error)
    return f"cannot write the data set being received to incoming/: {what}"
