"""The running call's context: :func:`ivy.current` inside a task, and the progress it reports
(best effort, at most :data:`PROGRESS_PER_SECOND` updates a second)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass

log = logging.getLogger("ivy.worker")

#: Most progress notifications sent per call and second.
PROGRESS_PER_SECOND = 10
#: A progress note longer than this is cut to it (characters).
MAX_NOTE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a call is: ``fraction`` from 0.0 to 1.0, and an optional ``note``."""

    fraction: float
    """How far the call is, from 0.0 to 1.0 (0.25: a quarter done)."""
    note: str | None = None
    """What the task says about it, cut to :data:`MAX_NOTE_CHARS` characters; or None."""


#: sends a progress update of the running call (the worker's recorder)
ProgressSink = Callable[[Progress], None]


class CallContext:
    """What :func:`ivy.current` returns inside a task: the call being run."""

    __slots__ = (
        "_last",
        "_lock",
        "_sink",
        "_warned",
        "attempt",
        "call_id",
        "queue",
        "task",
        "worker",
    )

    def __init__(self, call_id: str, task: str, queue: str | None, attempt: int,
                 worker: str | None = None, sink: ProgressSink | None = None) -> None:
        #: the call's id (what its producer's ``call.id`` holds)
        self.call_id = call_id
        #: the task's registered name
        self.task = task
        #: the queue the call was sent to (None for a message of the original's form)
        self.queue = queue
        #: 0 on the first run, then 1, 2, ... on retries
        self.attempt = attempt
        #: the worker running it (``host:pid``)
        self.worker = worker
        self._sink = sink
        self._last = -math.inf
        self._lock = threading.Lock()
        self._warned = False

    def __repr__(self) -> str:
        return f"<CallContext {self.call_id} {self.task} attempt={self.attempt}>"

    def progress(self, fraction: float, note: str | None = None) -> None:
        """Report how far the call is; its producer's ``call.on_progress`` callbacks get it.

        Rate-limited (at most :data:`PROGRESS_PER_SECOND` updates a second; a fraction of 1
        always goes) and best effort (docs/internals/results.md): it never raises for a
        transport failure.

        Args:
            fraction: from 0 to 1 (0.25: a quarter done).
            note: text, cut to :data:`MAX_NOTE_CHARS` characters; or None.

        Raises:
            ValueError: a ``fraction`` that is not a number from 0 to 1, or a ``note`` that
                is not text.
        """
        if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                or not 0.0 <= fraction <= 1.0):
            raise ValueError(f"progress fraction {fraction!r} must be a number from 0 to 1, "
                             "such as 0.25 for a quarter done")
        if note is not None and not isinstance(note, str):
            raise ValueError(f"progress note {note!r} must be text or None")
        if self._sink is None:
            return
        now = time.monotonic()
        with self._lock:
            if fraction < 1.0 and now - self._last < 1.0 / PROGRESS_PER_SECOND:
                return
            self._last = now
        update = Progress(float(fraction), None if note is None else note[:MAX_NOTE_CHARS])
        try:
            self._sink(update)
        except Exception:
            if not self._warned:  # once per call: a broken notifier must not flood the log
                self._warned = True
                log.warning("call %s of %r: sending its progress failed (it runs on)",
                            self.call_id, self.task, exc_info=True)


_current: ContextVar[CallContext | None] = ContextVar("ivy_current_call", default=None)


def current() -> CallContext:
    """The context of the call this task body runs for.

    Returns:
        Its ``call_id``, ``task``, ``queue``, ``attempt``, ``worker`` and
        ``progress(fraction, note=None)``.

    Raises:
        RuntimeError: outside a task run by a worker (in the task's thread or coroutine).
    """
    found = _current.get()
    if found is None:
        raise RuntimeError("ivy.current() is only set while a worker runs a task (in the "
                           "task's thread or coroutine): call it from inside a task body")
    return found


def enter(context: CallContext) -> Token[CallContext | None]:
    """Make ``context`` current in this thread or coroutine; pass what it returns to
    :func:`leave`."""
    return _current.set(context)


def leave(token: Token[CallContext | None]) -> None:
    """Undo :func:`enter`."""
    _current.reset(token)
