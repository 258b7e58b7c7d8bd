"""The machinery shared by ivy's background batch writers (sends, acks, results): a list of
waiting items written in batches on one daemon thread, started on demand, ended when idle."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("ivy")

T = TypeVar("T")
R = TypeVar("R")


class BatchThread(Generic[T]):
    """Items queued with :meth:`_enqueue` are written by :meth:`_write_batch` on one daemon
    thread, up to ``max_batch`` at a time: what comes while a write is in progress goes in the
    next one. The thread starts with the first item and ends after ``idle`` seconds with nothing
    to do; the next item starts another. With ``max_backlog``, a submitter that brings that
    many items waiting waits (its items queued) until the thread takes a batch, unless it is the
    writer's own thread. Subclasses name the exception that refuses items after :meth:`close`
    (:meth:`_refusal`) and may write an item on the caller's thread while nothing else is
    written (:meth:`_claim_or_enqueue`, :meth:`_release`)."""

    def __init__(self, *, name: str, max_batch: int, idle: float = 5.0,
                 max_backlog: int | None = None) -> None:
        if max_backlog is not None and max_backlog < 1:
            raise ValueError(f"max_backlog={max_backlog!r}: give a number of messages >= 1, "
                             "or None for no bound")
        self._name = name
        self._max_batch = max_batch
        self._idle = idle
        self._backlog = max_backlog
        self._waiting: list[T] = []
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the thread waits for items, flush() for both
        self._room = threading.Condition(lock)  # submitters wait for room in the backlog
        self._thread: threading.Thread | None = None
        self._writing = 0  # writes in progress: the thread's, and those claimed by callers
        self._closed = False

    # -- for subclasses

    def _write_batch(self, batch: list[T]) -> None:
        """Write ``batch`` (on the writer's thread, outside the lock)."""
        raise NotImplementedError

    def _refusal(self) -> Exception:
        """The exception that refuses an item handed over after :meth:`close`."""
        return RuntimeError(f"{self._name}: closed")

    def _closed_late(self, timeout: float) -> None:
        """Called by :meth:`close` when what waits was not written within ``timeout``."""

    def _enqueue(self, items: list[T]) -> None:
        """Queue ``items`` for the thread; raise :meth:`_refusal` once closed."""
        with self._cond:
            if self._closed:
                raise self._refusal()
            self._append(items)
            self._wait_for_room()

    def _claim_or_enqueue(self, items: list[T]) -> bool:
        """Like :meth:`_enqueue`, except while nothing waits or is being written: then queue
        nothing and return True. The caller writes ``items`` itself, at once, the write counted
        as in progress (flush() waits for it) until it calls :meth:`_release`."""
        with self._cond:
            if self._closed:
                raise self._refusal()
            if not self._waiting and not self._writing:
                self._writing += 1
                return True
            self._append(items)
            self._wait_for_room()
            return False

    def _release(self) -> None:
        """End a write claimed with :meth:`_claim_or_enqueue`."""
        with self._cond:
            self._writing -= 1
            self._cond.notify_all()

    def _hand_over(self, items: list[T]) -> None:
        """Queue ``items`` of a claimed write that the caller could not finish, for the thread:
        even once closed, and never waiting for room."""
        with self._cond:
            self._append(items)

    def _take_waiting(self) -> list[T]:
        """Take out what waits (nothing will write it)."""
        with self._cond:
            left, self._waiting = self._waiting, []
            self._cond.notify_all()
            self._room.notify_all()
        return left

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._cond:
            return self._closed

    def _wait_closed(self, pause: float) -> bool:
        """Wait ``pause`` seconds, less if the writer closes meanwhile; whether it is closed.
        For the pauses of a write that tries again."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed, pause)

    def _try_for(self, write: Callable[[], R],
                 unreachable: type[Exception] | tuple[type[Exception], ...], seconds: float,
                 what: str, where: str, logger: logging.Logger) -> R | None:
        """``write()``, tried again while it raises ``unreachable`` (0.05 s apart, doubling to
        1 s) for up to ``seconds`` or until the writer closes: then None, logged as ``what``
        (``"3 ack(s)"``) not written to ``where``, whose messages come back when their leases
        end. Other exceptions go to the caller."""
        give_up = time.monotonic() + seconds
        pause = 0.05
        while True:
            try:
                return write()
            except unreachable as exc:
                if self.closed or time.monotonic() >= give_up:
                    logger.error("%s not written to %s (%s); their messages come back when "
                                 "their leases end", what, where, exc)
                    return None
                logger.warning("writing %s to %s failed (%s); trying again in %.2f s", what,
                               where, exc, pause)
                self._wait_closed(pause)
                pause = min(pause * 2, 1.0)

    def _refuse(self) -> None:
        """Refuse new items from now on (a close that refuses first calls it); the thread writes
        what waits, then ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._room.notify_all()

    # -- the machinery (under the lock)

    def _append(self, items: list[T]) -> None:
        was_empty = not self._waiting  # the thread waits only while nothing waits
        self._waiting.extend(items)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        elif was_empty:
            self._cond.notify_all()

    def _wait_for_room(self) -> None:
        backlog = self._backlog
        if backlog is not None and threading.current_thread() is not self._thread:
            # the writer's own callbacks never wait for it
            while len(self._waiting) >= backlog and not self._closed:
                self._room.wait()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: bool(self._waiting) or self._closed, self._idle)
                    if not self._waiting:
                        self._thread = None
                        self._cond.notify_all()
                        return
                    batch = self._waiting[:self._max_batch]
                    del self._waiting[:self._max_batch]  # in place: a long backlog is not copied
                    self._writing += 1
                    if self._backlog is not None:
                        self._room.notify_all()
                try:
                    self._write_batch(batch)
                except Exception:  # never let the thread die with items waiting
                    log.exception("%s: writing %d item(s) failed", self._name, len(batch))
                finally:
                    with self._cond:
                        self._writing -= 1
                        self._cond.notify_all()
        except BaseException:
            with self._cond:  # the next item starts another thread
                if self._thread is threading.current_thread():
                    self._thread = None
                self._cond.notify_all()
                self._room.notify_all()
            raise

    # -- public

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything handed over so far is written (the batch being written too);
        whether it was in time. On the writer's own thread it cannot wait for itself: it says at
        once whether anything else waits or is being written."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if threading.current_thread() is self._thread:
                return not self._waiting and self._writing <= 1
            while self._waiting or self._writing:
                if self._thread is None and not self._writing:
                    return False  # nothing will write what waits
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what waits (within ``timeout``; a write that tries again goes on trying till
        then), then refuse new items."""
        if not self.flush(timeout):
            self._closed_late(timeout)
        self._refuse()
