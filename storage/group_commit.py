"""Group commit: the index rows of instances arriving on several associations at once share one transaction,
one durable commit and one fsync of each folder their files went to.

Leader and followers, as databases commit their logs: a thread that submits work while no batch is running
becomes the leader and runs everything pending as one batch; threads that submit meanwhile wait, and the next
of them to wake leads the next batch with all that gathered during the previous one. One association alone
never waits for a batch (it leads its own, of one), so a lone sender pays nothing for this; several senders
share each commit's fsync instead of queueing one fsync each behind a lock.

`exclusive()` runs other work of the same writer (the duplicate and conflict paths, start-up reconciliation) with
no batch running, which is what the single index lock used to give.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Ticket(Generic[Item, Result]):
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """Runs `run_batch(items)` for batches of submitted items, one batch at a time.

    `run_batch` returns one entry per item, in order: the item's result, or the exception to raise in the
    thread that submitted it. An exception out of `run_batch` itself is raised in every submitter of the batch.
    """

    def __init__(
        self, run_batch: Callable[[Sequence[Item]], Sequence[Result | BaseException]], max_batch: int = 256
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._condition = threading.Condition()
        self._pending: list[_Ticket[Item, Result]] = []
        self._leading = False
        self.batches = 0  # counters, for tests and the benchmark
        self.items = 0

    def submit(self, item: Item) -> Result:
        ticket: _Ticket[Item, Result] = _Ticket(item)
        with self._condition:
            self._pending.append(ticket)
            while not ticket.done:
                if self._leading:
                    self._condition.wait()
                    continue
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._leading = True
                self._condition.release()
                try:
                    self._lead(batch)
                finally:
                    self._condition.acquire()
                    self._leading = False
                    self._condition.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _lead(self, batch: list[_Ticket[Item, Result]]) -> None:
        try:
            results = self._run_batch([ticket.item for ticket in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} returned {len(results)} results")
        except BaseException as error:  # noqa: BLE001 - handed to every submitter, raised in their threads
            results = [error] * len(batch)
        self.batches += 1
        self.items += len(batch)
        for ticket, result in zip(batch, results):
            if isinstance(result, BaseException):
                ticket.error = result
            else:
                ticket.result = result
            ticket.done = True

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No batch runs (and no other exclusive block) while the block runs."""
        with self._condition:
            while self._leading:
                self._condition.wait()
            self._leading = True
        try:
            yield
        finally:
            with self._condition:
                self._leading = False
                self._condition.notify_all()
