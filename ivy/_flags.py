"""Light stand-ins for ``threading.Event`` and for the ``concurrent.futures.Future`` of a send,
made once per call.

A producer makes two events and a send future per ``delayed_call``. The standard ones are a
``Condition``, a lock, a deque and half a dozen bound methods each: ~25 objects per call that
the garbage collector tracks while the call waits for its result, and walks again on every
collection. With thousands of calls in flight, collections took a third of a producer's CPU
(``delayed_call`` ran 64 us with the collector off against 90-114 us with it on). A
:class:`Flag` or :class:`Sent` is one object: a waiter's lock is made only when a thread
actually waits, and one module-wide lock guards the few instructions that hand it over.
"""

from __future__ import annotations

import logging
from _thread import LockType, allocate_lock
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

log = logging.getLogger("ivy")

#: held for a few instructions at a time: setting a flag, adding or removing a waiter
_guard = allocate_lock()


def _wait(waiters: list[LockType], waiter: LockType, timeout: float | None) -> bool:
    """Block on ``waiter`` (already in ``waiters``) until released or ``timeout``; a waiter
    that timed out is taken back out. True if it was released."""
    if waiter.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
        return True
    with _guard:
        if waiter in waiters:
            waiters.remove(waiter)
            return False
    return True  # released between the timeout and taking it out


class Flag:
    """``threading.Event``'s ``is_set``, ``set`` and ``wait``, without a Condition."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[LockType] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with _guard:
            if self._set:
                return
            self._set = True
            waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            waiter.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds passed; whether it is set."""
        if self._set:
            return True
        waiter = allocate_lock()
        waiter.acquire()
        with _guard:
            if self._set:
                return True
            if self._waiters is None:
                self._waiters = []
            waiters = self._waiters
            waiters.append(waiter)
        return _wait(waiters, waiter, timeout) or self._set


class Sent(Future[None]):
    """The future of one message's send: it completes when the backend has the message
    (RabbitMQ: the confirm), or fails with the reason it was not taken.

    It offers ``Future``'s own methods (``done``, ``result``, ``exception``,
    ``add_done_callback``, ``set_result``, ``set_exception``, ``cancel``...), each the way
    ``Future`` documents it, but none of its internals: ``concurrent.futures.wait()`` and
    ``as_completed()`` do not take it. A send is never cancelled (``cancel()`` is False)."""

    __slots__ = ("_callbacks", "_error", "_finished", "_sent_waiters")

    def __init__(self) -> None:  # no Future.__init__: no Condition
        self._finished = False
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future[None]], Any]] | None = None
        self._sent_waiters: list[LockType] | None = None

    def __repr__(self) -> str:
        state = "pending" if not self._finished else "failed" if self._error else "sent"
        return f"<Sent {state}>"

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return not self._finished

    def done(self) -> bool:
        return self._finished

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: None) -> None:
        self._finish(None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(exception)

    def _finish(self, error: BaseException | None) -> None:
        with _guard:
            if self._finished:
                raise InvalidStateError(f"{self!r} is finished already")
            self._finished, self._error = True, error
            callbacks, self._callbacks = self._callbacks, None
            waiters, self._sent_waiters = self._sent_waiters, None
        for waiter in waiters or ():
            waiter.release()
        for fn in callbacks or ():
            self._call(fn)

    def _call(self, fn: Callable[[Future[None]], Any]) -> None:
        try:
            fn(self)
        except Exception:  # as Future does: logged, the other callbacks still run
            log.exception("exception calling callback for %r", self)

    def add_done_callback(self, fn: Callable[[Future[None]], Any]) -> None:
        with _guard:
            if not self._finished:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._call(fn)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._finished:
            waiter = allocate_lock()
            waiter.acquire()
            with _guard:
                waiters = self._sent_waiters
                if not self._finished:
                    if waiters is None:
                        waiters = self._sent_waiters = []
                    waiters.append(waiter)
            if waiters is not None and not self._finished and not _wait(waiters, waiter,
                                                                          timeout):
                raise TimeoutError()
        return self._error

    def result(self, timeout: float | None = None) -> None:
        error = self.exception(timeout)
        if error is not None:
            raise error
