"""Call: the producer's handle on one delayed call (status, result, callbacks, ``await``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ivy.errors import RemoteTaskError, ResultTimeout
from ivy.message import Notification, Status

log = logging.getLogger("ivy.call")
R = TypeVar("R")
ResultCallback = Callable[[RemoteTaskError | None, Any], None]

_PENDING = object()


class Call(Generic[R]):
    """Status moves ``scheduled`` -> ``running`` -> ``successful`` / ``errored``; a successful
    call becomes ``done`` once its callbacks (the per-call one and the task's ``finished``) ran.

    The first final notification wins: a redelivered task that runs twice settles the call once,
    and every callback runs exactly once.
    """

    def __init__(self, call_id: str, task: str, queue: str) -> None:
        self.id = call_id
        self.task = task
        self.queue = queue
        self.status: Status = "scheduled"
        self.attempt = 0
        self.worker: str | None = None
        self._value: Any = _PENDING
        self._error: RemoteTaskError | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Call[R]], None]] = []
        self._waiters: list[Callable[[Call[R]], None]] = []
        self._settling_thread: int | None = None

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.task} {self.status}>"

    def done(self) -> bool:
        """True once the call succeeded or errored and its callbacks ran."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> R:
        """Block until the result arrives and the callbacks ran. Raises RemoteTaskError if the
        task failed, and :class:`ivy.ResultTimeout` (a ``TimeoutError``) when ``timeout``
        seconds pass first."""
        waits = not self._event.is_set() and threading.get_ident() != self._settling_thread
        if waits and not self._event.wait(timeout):
            raise ResultTimeout(
                f"no result for call {self.id} of {self.task!r} within {timeout} s (status "
                f"{self.status!r}); is a worker listening on queue {self.queue!r}? The call "
                "may still complete: wait again, or raise the timeout")
        if self._error is not None:
            raise self._error
        value: R = self._value
        return value

    def exception(self, timeout: float | None = None) -> RemoteTaskError | None:
        """Wait like :meth:`result`, then return the error (or None) instead of raising it."""
        try:
            self.result(timeout)
        except RemoteTaskError as exc:
            return exc
        return None

    def add_done_callback(self, fn: Callable[[Call[R]], None]) -> None:
        """Run ``fn(call)`` when the call settles (at once if it already did)."""
        with self._lock:
            if self._settling_thread is None:
                self._callbacks.append(fn)
                return
        fn(self)

    def __await__(self) -> Generator[Any, None, R]:
        if not self._event.is_set():
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()

            def wake(_: Call[R]) -> None:
                loop.call_soon_threadsafe(_resolve, future)

            with self._lock:
                if not self._event.is_set():
                    self._waiters.append(wake)
                else:
                    _resolve(future)
            yield from future.__await__()
        return self.result(0)

    # -- driven by the notification consumer ------------------------------------------------

    def _running(self, notification: Notification) -> None:
        if not self._event.is_set():
            self.status = "running"
            self.attempt = notification.attempt
            self.worker = notification.worker

    def _settle(self, notification: Notification) -> bool:
        """Record a final notification; False if the call had settled already."""
        with self._lock:
            if self._settling_thread is not None:
                return False
            self._settling_thread = threading.get_ident()
            self.attempt = notification.attempt
            self.worker = notification.worker
            if notification.status == "successful":
                self._value = notification.result
                self.status = "successful"
            else:
                self._error = RemoteTaskError.from_wire(
                    notification.error, task=self.task, call_id=self.id
                )
                self.status = "errored"
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("callback of call %s (%s) raised", self.id, self.task)
        with self._lock:
            if self._error is None:
                self.status = "done"
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for fn in waiters:
            fn(self)
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def result_callback_adapter(callback: ResultCallback) -> Callable[[Call[Any]], None]:
    """Wrap an error-first ``callback(err, result)`` as a done-callback."""

    def run(call: Call[Any]) -> None:
        error = call._error
        callback(error, None if error is not None else call._value)

    return run


def finished_adapter(finished: Callable[[Any], None]) -> Callable[[Call[Any]], None]:
    """Wrap a task's ``finished(result)`` as a done-callback that runs on success only."""

    def run(call: Call[Any]) -> None:
        if call._error is None:
            finished(call._value)

    return run
