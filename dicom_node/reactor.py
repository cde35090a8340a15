"""Event-driven reactors for the SCP's associations (pynetdicom's, without its polling sleeps).

pynetdicom runs each association as two threads that poll each other: the DUL reactor sleeps 1 ms whenever a
loop found nothing to do, and the association reactor sleeps 1 ms before every look at its message queue. A
C-STORE crosses both (the PDUs come in on the DUL thread, the handler runs on the association thread, the
response goes back through the DUL thread), so each instance waited 2-3 ms on sleeps alone: a third of bare
pynetdicom's time per instance on loopback (profiled, docs/performance.md).

Here the same loops wait on what they wait for instead:
- the DUL thread blocks in `select()` on the peer's socket and a wake-up socket that is written to when the
  association queues a primitive for the peer (a response, a release, an abort) or is being stopped;
- the association thread blocks on an event set when the DUL hands it a DIMSE message or an ACSE primitive,
  when the DUL stops, and when the association is killed.
Both still look at their timers at least every `TIMER_CHECK_S`. The loops below are pynetdicom 3.0's, with the
sleeps replaced by these waits.

When the SCP gives the association a `FastStoreSettings`, the DUL hands each P-DATA-TF PDU of an established
association to a `dicom_node.fast_store.StoreReceiver` first: C-STOREs are received and answered there, on this
thread; every other message goes on through pynetdicom's state machine, DIMSE provider and service classes.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

from dicom_node.fast_store import Context, FastStoreSettings, StoreReceiver

logger = logging.getLogger(__name__)

TIMER_CHECK_S = 0.05  # the longest a reactor waits before looking at its timers and kill flags again


class NotifyingQueue(queue.Queue):
    """A queue that calls `notify` after each put (the consumer waits on that, not on a poll)."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class _WakeUp:
    """A socket pair the DUL's select() watches beside the peer's socket: `set` makes select return."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._pending = False

    def fileno(self) -> int:
        return self._reader.fileno()

    def set(self) -> None:
        with self._lock:
            if self._pending:
                return
            self._pending = True
        try:
            self._writer.send(b"\0")
        except OSError:  # closed (the association ended) or full (a wake-up is pending anyway)
            pass

    def clear(self) -> None:
        with self._lock:
            self._pending = False
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL service provider, waiting in select() instead of sleeping between loops."""

    def __init__(self, assoc: EventDrivenAssociation) -> None:
        super().__init__(assoc)
        self._wakeup = _WakeUp()
        self.to_provider_queue = NotifyingQueue(self._wakeup.set)
        self.to_user_queue = NotifyingQueue(assoc.wake)
        self.receiver: StoreReceiver | None = None  # the C-STORE fast path, when the SCP asked for it

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0's `_read_pdu_data`, with P-DATA-TF PDUs of an established association offered to the
        fast path first; what it hands back goes on as pynetdicom would have taken it."""
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            logger.error("Connection closed before the entire PDU was received")
            logger.exception(exc)
            self.event_queue.put("Evt17")
            return
        try:
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            logger.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            bytestream = header + self.socket.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            logger.error("Connection closed before the entire PDU was received")
            logger.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(bytestream) != 6 + pdu_length:
            logger.error(
                f"The received PDU is shorter than expected ({len(bytestream)} of {6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self.receiver is not None and self.state_machine.current_state == "Sta6":
            pdus = self.receiver.consume(bytestream)  # ProtocolError: the reactor aborts the association
        else:
            pdus = [bytestream]
        for pdu_bytes in pdus:
            try:
                pdu, event = self._decode_pdu(pdu_bytes)
                self.event_queue.put(event)
            except Exception as exc:
                logger.error("Unable to decode the received PDU data")
                logger.exception(exc)
                self.event_queue.put("Evt19")
                return
            self._recv_pdu.put(pdu)

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wakeup.set()

    def stop_dul(self) -> bool:
        """As pynetdicom's: stop the reactor once the state machine is idle (Sta1), waking it to notice."""
        if self.state_machine.current_state != "Sta1":
            return False
        self.kill_dul()
        if threading.current_thread() is not self:
            self.join()
        return True

    def _wait(self) -> None:
        """Until the peer sent something, a primitive is queued for the peer, or `TIMER_CHECK_S` passed."""
        watched: list[object] = [self._wakeup]
        wrapper = self.socket
        sock = wrapper.socket if wrapper is not None and wrapper._is_connected else None
        if sock is not None:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted data is buffered in the SSL object; select() cannot see it
            watched.append(sock)
        try:
            select.select(watched, [], [], TIMER_CHECK_S)
        except (OSError, ValueError):
            pass  # the socket was closed under us: the transport check that follows reports it
        self._wakeup.clear()

    def run_reactor(self) -> None:
        try:
            self._run_reactor()
        finally:
            if self.receiver is not None:
                self.receiver.close()
            self._wakeup.close()
            self.assoc.wake()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's `DULServiceProvider.run_reactor` with `_wait` in place of its sleep."""
        self._idle_timer.start()
        wait = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if wait:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("Exception in the DUL reactor, aborting the association")
                logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                wait = True
                continue
            self.state_machine.do_action(event)
            wait = False


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor waits on its DUL instead of polling it every millisecond."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._wake = threading.Event()
        super().__init__(*args, **kwargs)
        self.dul = EventDrivenDUL(self)
        # The timeouts live in the DUL's timers: hand them to the new DUL.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse.msg_queue = NotifyingQueue(self.wake)

    def wake(self) -> None:
        self._wake.set()

    def receive_stores(self, settings: FastStoreSettings) -> None:
        """Take C-STOREs through the fast path (`dicom_node.fast_store`) instead of pynetdicom's C-STORE event."""
        contexts: dict[int, Context] = {}

        def context(context_id: int) -> Context | None:
            if context_id not in contexts:
                accepted = self._accepted_cx.get(context_id)
                if accepted is None or not accepted.transfer_syntax:
                    return None
                contexts[context_id] = Context(str(accepted.abstract_syntax), str(accepted.transfer_syntax[0]))
            return contexts[context_id]

        self.dul.receiver = StoreReceiver(
            settings,
            context,
            lambda: str(self.requestor.ae_title).strip(),
            self.dul.socket.send,
            lambda: int(self.requestor.maximum_length or 0),
            (str(self.ae.implementation_class_uid), str(self.ae.implementation_version_name or "")),
            self,
        )

    def kill(self) -> None:
        self._kill = True
        self.wake()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's `Association._run_reactor`: serve DIMSE messages, answer a release, notice an abort,
        a dead DUL or the network timeout; waiting on `wake` between looks instead of sleeping 1 ms."""
        self._is_paused = False
        busy = False
        while not self._kill:
            if not busy:
                self._wake.wait(TIMER_CHECK_S)
                self._wake.clear()
            busy = False
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)
                busy = True

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                logger.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                logger.info("Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else ""))
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logger.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
