"""A background sender that joins the messages handed to it while it was busy into one write
(SQLite, SQS, IronMQ), each message with a future (docs/internals/sqlite.md, "Batched sends")."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from ivy._batch_thread import BatchThread
from ivy._flags import Sent

log = logging.getLogger("ivy.queue")


@dataclass(slots=True)
class Outgoing:
    """One message waiting to be written."""

    queue: str
    body: bytes
    priority: int
    delay: float
    route: str | None
    future: Future[None] = field(default_factory=Sent)


#: write(batch) -> one error per message (None: written); raising fails the whole batch
Writer = Callable[[list[Outgoing]], list[BaseException | None]]


class BatchSender(BatchThread[Outgoing]):
    """Writes what :meth:`submit` hands it on one daemon thread, up to ``max_batch`` messages
    per write. The thread starts with the first message and ends after ``idle`` seconds with
    nothing to do."""

    def __init__(self, write: Writer, *, max_batch: int, name: str, idle: float = 5.0,
                 max_backlog: int | None = None) -> None:
        super().__init__(name=name, max_batch=max_batch, idle=idle, max_backlog=max_backlog)
        self._write = write

    def send(self, queue: str, bodies: list[bytes], *, priority: int = 0, delay: float = 0.0,
             route: str | None = None) -> list[Future[None]]:
        """Queue bodies for writing: the futures that a backend's ``send_many`` returns."""
        items = [Outgoing(queue, body, priority, delay, route) for body in bodies]
        self.submit(items)
        return [item.future for item in items]

    def submit(self, items: list[Outgoing]) -> None:
        self._enqueue(items)

    def _refusal(self) -> Exception:
        return RuntimeError(f"{self._name}: the queue backend is closed")

    def _write_batch(self, batch: list[Outgoing]) -> None:
        try:
            errors = self._write(batch)
        except BaseException as exc:
            errors = [exc] * len(batch)
        for item, error in zip(batch, errors, strict=True):
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(error)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (within ``timeout``), then refuse new messages."""
        self._refuse()  # first: nothing slips in between the flush and the failing below
        self.flush(timeout)
        for item in self._take_waiting():
            item.future.set_exception(RuntimeError(f"{self._name}: closed before it was sent"))


def by_queue(batch: list[Outgoing]) -> dict[str, list[int]]:
    """The positions in ``batch`` of each queue's messages, for writers that send per queue."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(batch):
        groups.setdefault(item.queue, []).append(index)
    return groups
