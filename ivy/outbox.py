"""The producer's outbox: messages handed to the queue backend and not confirmed yet, with
backpressure and ``flush`` (docs/internals/results.md, "The outbox")."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ivy.call import Call
from ivy.errors import PublishError, PublishTimeout

log = logging.getLogger("ivy.outbox")

#: Most messages waiting for a confirm at once; delayed_call blocks while this many wait.
MAX_UNCONFIRMED = 10_000


class Outbox:
    """Tracks the confirm of every message a producer handed over."""

    def __init__(self, on_failed: Callable[[Call[Any], BaseException], None],
                 max_unconfirmed: int = MAX_UNCONFIRMED) -> None:
        self._on_failed = on_failed
        self._max = max_unconfirmed
        self._cond = threading.Condition()
        self._unconfirmed = 0
        self._failures: list[tuple[Call[Any], BaseException]] = []

    @property
    def unconfirmed(self) -> int:
        return self._unconfirmed

    def track(self, call: Call[Any], future: Future[None]) -> None:
        """Follow ``call``'s send until ``future`` completes. Blocks while the outbox is full."""
        with self._cond:
            if self._unconfirmed >= self._max:
                log.debug("outbox full (%d unconfirmed): waiting for confirms", self._max)
                self._cond.wait_for(lambda: self._unconfirmed < self._max)
            self._unconfirmed += 1
        call._sending(future)
        future.add_done_callback(lambda f: self._confirmed(call, f))

    def _confirmed(self, call: Call[Any], future: Future[None]) -> None:
        error = future.exception()
        with self._cond:
            self._unconfirmed -= 1
            if error is not None:
                self._failures.append((call, error))
            self._cond.notify_all()
        if error is not None:
            log.error("call %s of %r: its message was not taken: %s", call.id, call.task, error)
            self._on_failed(call, error)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message handed over so far is confirmed. Raise
        :class:`ivy.PublishTimeout` if some are still unconfirmed after ``timeout`` seconds,
        and :class:`ivy.PublishError` naming those refused since the last flush."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unconfirmed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PublishTimeout(
                        f"{self._unconfirmed} message(s) still unconfirmed after {timeout} s; "
                        "they may still be confirmed: flush again, or check the broker")
                self._cond.wait(left)
            failures, self._failures = self._failures, []
        if failures:
            call, error = failures[0]
            raise PublishError(
                f"{len(failures)} message(s) sent since the last flush were not taken by the "
                f"queue backend; their calls failed with PublishError. First: call {call.id} "
                f"of {call.task!r}: {error}")
