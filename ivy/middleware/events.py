"""``ivy.middleware.Events``: the worker's task events, published through the notifier for
``ivy events`` and other tools (``ivy worker --events``, ``app.listen(events=True)``).

Each event is a JSON object ``{"ivy": 1, "event", "id", "name", "queue", "worker", "time",
"attempt", ...}``, ``time`` in seconds since the epoch. Per attempt of a call, in order:

* ``received`` and ``started`` together, as the task is about to run (the worker has no
  earlier hook); ``received`` adds ``sent``, the producer's send time, so a tool can tell how
  long the call waited in the queue;
* ``succeeded`` with ``runtime`` (seconds), or ``failed`` with ``runtime`` and ``error``
  (``{"type", "message"}``; no traceback, no arguments, no result: events are seen by whoever
  can read the notifier, so they carry no task data);
* after a failure, ``retried`` with ``delay`` (seconds) when the call runs again, or
  ``dead_lettered`` with ``reason`` when it will not; a call whose last event is ``failed``
  errored without retries.

``dead_lettered`` also comes for a message that could not run at all (unknown task, bad
arguments; ``id``, ``name`` and ``queue`` are null when it could not even be decoded).

Events are a live stream, best effort: publishing one never delays or fails a task; a failure
is logged (at most once a minute, with how many were lost).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from ivy.message import Message
from ivy.middleware import Middleware
from ivy.notifiers.base import Notifier

log = logging.getLogger("ivy.events")

#: the event names, in the order one attempt can produce them
EVENTS = ("received", "started", "succeeded", "failed", "retried", "dead_lettered")
#: seconds between two log lines about events that could not be published
LOG_EVERY = 60.0


class Events(Middleware):
    """Publishes the worker's task events through ``notifier`` (see the module docstring);
    ``worker`` names the worker in them (default: ``host:pid``, as the worker names itself)."""

    def __init__(self, notifier: Notifier, worker: str | None = None) -> None:
        if worker is None:
            from ivy.worker import worker_name

            worker = worker_name()
        self.notifier = notifier
        self.worker = worker
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # id(message) -> monotonic start of its run
        self._lost = 0
        self._last_log = 0.0

    def before_task(self, message: Message) -> None:
        with self._lock:
            self._started[id(message)] = time.monotonic()
        sent = message.created_ms / 1000 if message.created_ms else None
        self._emit("received", message, sent=sent)
        self._emit("started", message)

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        with self._lock:
            started = self._started.pop(id(message), None)
        runtime = None if started is None else round(time.monotonic() - started, 6)
        if error is None:
            self._emit("succeeded", message, runtime=runtime)
        else:
            self._emit("failed", message, runtime=runtime, error=_short(error))

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._emit("retried", message, delay=round(delay, 3), error=_short(error))

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        self._emit("dead_lettered", message, reason=reason)

    def _emit(self, event: str, message: Message | None, **extra: Any) -> None:
        body: dict[str, Any] = {
            "ivy": 1, "event": event,
            "id": message.id if message else None,
            "name": message.name if message else None,
            "queue": message.queue if message else None,
            "worker": self.worker, "time": time.time(),
            "attempt": message.attempt if message else None}
        body.update(extra)
        try:
            self.notifier.publish_event(json.dumps(body).encode())
        except Exception as exc:
            self._failed(event, exc)

    def _failed(self, event: str, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._lost += 1
            if now - self._last_log < LOG_EVERY and self._last_log:
                return
            self._last_log, lost, self._lost = now, self._lost, 0
        log.warning("events: publishing %r events on %s failed (%s: %s); %d event(s) lost "
                    "since the last report", event, self.notifier.url, type(exc).__name__,
                    exc, lost)


def _short(error: dict[str, str]) -> dict[str, str]:
    """An error as events carry it: type and message, no traceback."""
    return {"type": str(error.get("type", "")), "message": str(error.get("message", ""))}
