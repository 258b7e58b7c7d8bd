"""Light stand-ins for ``threading.Event`` and for the ``concurrent.futures.Future`` of a send,
made once per call: one object each, a lock only when a thread waits."""

from __future__ import annotations

import contextlib
import logging
from _thread import LockType, allocate_lock
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

log = logging.getLogger("ivy")

#: held for a few instructions at a time: setting a flag, adding or removing a waiter
_guard = allocate_lock()


class Flag:
    """``threading.Event``'s ``is_set``, ``set`` and ``wait``, without a Condition."""

    __slots__ = ("_set", "_sleepers")

    def __init__(self) -> None:
        self._set = False
        self._sleepers: list[LockType] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with _guard:
            if self._set:
                return
            waiters = self._mark()
        _release(waiters)

    def _mark(self) -> list[LockType] | None:
        """Set the flag (the caller holds ``_guard``); the waiters to release after it."""
        self._set = True
        waiters, self._sleepers = self._sleepers, None
        return waiters

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds passed; whether it is set."""
        if self._set:
            return True
        waiter = allocate_lock()
        waiter.acquire()
        with _guard:
            if self._set:
                return True
            if self._sleepers is None:
                self._sleepers = []
            waiters = self._sleepers
            waiters.append(waiter)
        if waiter.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            return True
        with _guard:  # timed out: take the waiter back out, unless set meanwhile
            if waiter in waiters:
                waiters.remove(waiter)
        return self._set


def _release(waiters: list[LockType] | None) -> None:
    for waiter in waiters or ():
        waiter.release()


class Sent(Flag, Future[None]):
    """The future of one message's send: it completes when the backend has the message
    (RabbitMQ: the confirm), or fails with the reason it was not taken. Done is its flag set.

    It offers ``Future``'s own methods (``done``, ``result``, ``exception``,
    ``add_done_callback``, ``set_result``, ``set_exception``, ``cancel``...), each the way
    ``Future`` documents it, but none of its internals: ``concurrent.futures.wait()`` and
    ``as_completed()`` do not take it. A send is never cancelled (``cancel()`` is False)."""

    __slots__ = ("_callbacks", "_error")

    def __init__(self) -> None:  # no Future.__init__: no Condition
        Flag.__init__(self)
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future[None]], Any]] | None = None

    def __repr__(self) -> str:
        state = "pending" if not self._set else "failed" if self._error else "sent"
        return f"<Sent {state}>"

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return not self._set

    def done(self) -> bool:
        return self._set

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: None) -> None:
        self._finish(None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(exception)

    def _finish(self, error: BaseException | None) -> None:
        with _guard:
            if self._set:
                raise InvalidStateError(f"{self!r} is finished already")
            self._error = error
            callbacks, self._callbacks = self._callbacks, None
            waiters = self._mark()
        _release(waiters)
        for fn in callbacks or ():
            self._call(fn)

    def _call(self, fn: Callable[[Future[None]], Any]) -> None:
        try:
            fn(self)
        except Exception:  # as Future does: logged, the other callbacks still run
            log.exception("exception calling callback for %r", self)

    def add_done_callback(self, fn: Callable[[Future[None]], Any]) -> None:
        with _guard:
            if not self._set:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._call(fn)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.wait(timeout):
            raise TimeoutError()
        return self._error

    def result(self, timeout: float | None = None) -> None:
        error = self.exception(timeout)
        if error is not None:
            raise error


def complete(future: Future[None], error: BaseException | None) -> None:
    """Complete ``future`` with ``error`` (or success) unless it completed already."""
    with contextlib.suppress(InvalidStateError):
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
