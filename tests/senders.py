"""A sender that stops in the middle of a data set (pynetdicom as the requestor): the C-STORE request and the
first fragments of its data set are sent, the rest is held back until `finish()`; or never, when the sender
aborts or the node is killed meanwhile. A transfer in flight at a chosen moment, without timing races."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

FRAGMENT_BYTES = 4096


class PausedStore:
    def __init__(self, port: int, path: Path, calling: str = "TESTSCU", called: str = "IMMUNODE", sent: int = 2):
        dataset = pydicom.dcmread(path)
        ae = AE(ae_title=calling)
        ae.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
        self.assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not self.assoc.is_established:
            raise RuntimeError(f"association with port {port} not established")
        self.sop_instance_uid = str(dataset.SOPInstanceUID)
        context = self.assoc.accepted_contexts[0]
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = dataset.SOPClassUID
        request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
        request.Priority = 2
        request.DataSet = BytesIO(encode(dataset, False, True))
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        message.context_id = context.context_id
        self._pdus = list(message.encode_msg(context.context_id, FRAGMENT_BYTES))
        if len(self._pdus) <= sent + 1:
            raise ValueError(f"{path} fits in {len(self._pdus)} fragments: too small to stop in the middle")
        # The requestor's reactor would take the answer off the queue: paused as pynetdicom's own send_* do.
        self.assoc._reactor_checkpoint.clear()
        while not self.assoc._is_paused:
            time.sleep(0.0001)
        for pdu in self._pdus[: 1 + sent]:  # the command, then `sent` fragments of the data set
            self.assoc.dul.send_pdu(pdu)
        self._next = 1 + sent

    def finish(self) -> int | None:
        """Send the rest; the C-STORE status (None when no answer came)."""
        for pdu in self._pdus[self._next :]:
            self.assoc.dul.send_pdu(pdu)
        _, answer = self.assoc.dimse.get_msg(block=True)
        self.assoc._reactor_checkpoint.set()
        status = int(answer.Status) if answer is not None and answer.Status is not None else None
        self.assoc.release()
        return status

    def abort(self) -> None:
        self.assoc._reactor_checkpoint.set()
        self.assoc.abort()
