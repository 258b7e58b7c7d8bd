"""A background sender that joins the messages handed to it while it was busy into one write
(SQLite, SQS, IronMQ), each message with a future (docs/internals/sqlite.md, "Batched sends")."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

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


class BatchSender:
    """Writes what :meth:`submit` hands it on one daemon thread, up to ``max_batch`` messages
    per write. The thread starts with the first message and ends after ``idle`` seconds with
    nothing to do."""

    def __init__(self, write: Writer, *, max_batch: int, name: str, idle: float = 5.0,
                 max_backlog: int | None = None) -> None:
        if max_backlog is not None and max_backlog < 1:
            raise ValueError(f"max_backlog={max_backlog!r}: give a number of messages >= 1, "
                             "or None for no bound")
        self._write = write
        self._max = max_batch
        self._name = name
        self._idle = idle
        self._backlog = max_backlog
        self._items: list[Outgoing] = []
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the thread waits for messages
        self._room = threading.Condition(lock)  # producers wait for room in the backlog
        self._thread: threading.Thread | None = None
        self._closed = False

    def send(self, queue: str, bodies: list[bytes], *, priority: int = 0, delay: float = 0.0,
             route: str | None = None) -> list[Future[None]]:
        """Queue bodies for writing: the futures that a backend's ``send_many`` returns."""
        items = [Outgoing(queue, body, priority, delay, route) for body in bodies]
        self.submit(items)
        return [item.future for item in items]

    def submit(self, items: list[Outgoing]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name}: the queue backend is closed")
            waiting = not self._items  # the thread waits only while there is nothing
            self._items.extend(items)
            if waiting:
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if self._backlog is not None and threading.current_thread() is not self._thread:
                # the thread's own callbacks never wait for it
                while len(self._items) >= self._backlog and not self._closed:
                    self._room.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._items and not self._closed:
                    self._cond.wait(self._idle)
                if not self._items:
                    self._thread = None
                    return
                batch = self._items[:self._max]
                del self._items[:self._max]  # in place: a long backlog is not copied
                if self._backlog is not None:
                    self._room.notify_all()
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
        with self._cond:
            self._closed = True
            self._cond.notify()
            self._room.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            left, self._items = self._items, []
        for item in left:
            item.future.set_exception(RuntimeError(f"{self._name}: closed before it was sent"))


def by_queue(batch: list[Outgoing]) -> dict[str, list[int]]:
    """The positions in ``batch`` of each queue's messages, for writers that send per queue."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(batch):
        groups.setdefault(item.queue, []).append(index)
    return groups
