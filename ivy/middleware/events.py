"""``ivy.middleware.Events``: the worker's task events, published through the notifier in batches
by a thread of their own, for ``ivy events`` and other tools (docs/internals/middleware.md)."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
import weakref
from typing import Any

from ivy.message import Message
from ivy.middleware import Middleware
from ivy.stores import EventStream

log = logging.getLogger("ivy.events")

#: the event names, in the order one attempt can produce them
EVENTS = ("received", "started", "succeeded", "failed", "retried", "dead_lettered")
#: seconds between two log lines about events that could not be published
LOG_EVERY = 60.0
#: events queued for the publisher thread at most; more are dropped (and counted as lost)
MAX_PENDING = 10_000
#: seconds the interpreter's exit waits for the queued events
EXIT_FLUSH = 2.0
#: events sent in one batch at most
BATCH = 500

#: an event waiting for the publisher: name, the message's (id, name, queue, attempt) or
#: None, time, extra fields
_Pending = tuple[str, tuple[str, str, str | None, int] | None, float, dict[str, Any] | None]


class Events(Middleware):
    """Publishes the worker's task events through ``notifier`` (docs/internals/middleware.md);
    ``worker`` names the worker in them (default: ``host:pid``, as the worker names itself)."""

    def __init__(self, notifier: EventStream, worker: str | None = None) -> None:
        if worker is None:
            from ivy._process import worker_name

            worker = worker_name()
        self.notifier = notifier
        self.worker = worker
        self._lock = threading.Lock()
        #: id(message) -> monotonic start of its run (set and popped whole: no lock needed)
        self._started: dict[int, float] = {}
        self._lost = 0
        self._last_log = 0.0
        #: events for the publisher thread, encoded there: (event, message, time, extra), and
        #: the markers of :meth:`flush`, set once everything queued before them was handled
        self._queue: queue.SimpleQueue[_Pending | threading.Event] = queue.SimpleQueue()
        self._publisher: threading.Thread | None = None
        self._send_lock = threading.Lock()  # held while a batch is sent
        self._closed = False

    def before_task(self, message: Message) -> None:
        self._started[id(message)] = time.monotonic()
        now = time.time()
        sent = message.created_ms / 1000 if message.created_ms else None
        self._emit("received", message, now, {"sent": sent})
        self._emit("started", message, now, None)

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        started = self._started.pop(id(message), None)
        runtime = None if started is None else round(time.monotonic() - started, 6)
        if error is None:
            self._emit("succeeded", message, time.time(), {"runtime": runtime})
        else:
            self._emit("failed", message, time.time(),
                       {"runtime": runtime, "error": _short(error)})

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._emit("retried", message, time.time(),
                   {"delay": round(delay, 3), "error": _short(error)})

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        self._emit("dead_lettered", message, time.time(), {"reason": reason})

    def _emit(self, event: str, message: Message | None, now: float,
              extra: dict[str, Any] | None) -> None:
        """Queue an event for the publisher thread, which encodes and sends it: the task's
        thread only copies the message's fields (the worker raises its attempt afterwards)."""
        if self._closed:
            return
        if self._queue.qsize() >= MAX_PENDING:
            self._failed(event, OverflowError(f"{MAX_PENDING} events wait already"))
            return
        fields = (None if message is None else
                  (message.id, message.name, message.queue, message.attempt))
        self._queue.put((event, fields, now, extra))
        if self._publisher is None:
            self._start()

    def close(self, timeout: float = EXIT_FLUSH) -> None:
        """Publish what is queued (for up to ``timeout`` seconds), then publish no more: call
        it before the notifier closes (``Ivy.close`` does, once its workers stopped), since
        the publisher thread must not use a notifier being closed."""
        if not self.flush(timeout):
            log.warning("events: %d event(s) not published at close", self._queue.qsize())
        with self._send_lock:  # a batch in progress ends first
            self._closed = True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the events queued so far are published (or given up on); False if
        ``timeout`` passed first."""
        if self._publisher is None:
            return True  # nothing was ever queued
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._publisher is not None:
                return
            self._publisher = threading.Thread(
                target=_publish_loop, args=(weakref.ref(self), self._queue), daemon=True,
                name="ivy-events")
            self._publisher.start()
        _live.add(self)

    def _encode(self, pending: _Pending) -> bytes:
        event, fields, now, extra = pending
        ident, name, queue_name, attempt = fields if fields is not None else (None,) * 4
        body: dict[str, Any] = {"ivy": 1, "event": event, "id": ident, "name": name,
                                "queue": queue_name, "worker": self.worker, "time": now,
                                "attempt": attempt}
        if extra:
            body.update(extra)
        return json.dumps(body).encode()

    def _publish(self, first: _Pending | threading.Event) -> None:
        """The publisher thread: send ``first`` and whatever queued behind it, in order, in
        batches; set each flush marker once the events before it were handled."""
        item: _Pending | threading.Event | None = first
        while item is not None:
            batch: list[_Pending] = []
            markers: list[threading.Event] = []
            while item is not None and len(batch) < BATCH:
                if isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                with self._send_lock:
                    if batch and not self._closed:
                        self.notifier.publish_events([self._encode(p) for p in batch])
            except Exception as exc:
                self._failed(batch[0][0] if len(batch) == 1 else "", exc, len(batch))
            finally:
                for marker in markers:
                    marker.set()

    def _failed(self, event: str, exc: Exception, count: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self._lost += count
            if now - self._last_log < LOG_EVERY and self._last_log:
                return
            self._last_log, lost, self._lost = now, self._lost, 0
        log.warning("events: publishing %sevents on %s failed (%s: %s); %d event(s) lost "
                    "since the last report", f"{event!r} " if event else "", self.notifier.url,
                    type(exc).__name__, exc, lost)


#: the Events objects whose publisher runs: flushed when the interpreter exits
_live: weakref.WeakSet[Events] = weakref.WeakSet()


def _publish_loop(ref: weakref.ref[Events],
                  pending: queue.SimpleQueue[_Pending | threading.Event]) -> None:
    while True:
        try:
            first = pending.get(timeout=1.0)
        except queue.Empty:
            if ref() is None:  # an Events nobody holds any more ends its thread
                return
            continue
        events = ref()
        if events is None:
            return
        events._publish(first)
        del events


@atexit.register
def _flush_at_exit() -> None:
    for events in list(_live):
        if not events.flush(EXIT_FLUSH):
            log.warning("events: %d event(s) not published at exit", events._queue.qsize())


def _short(error: dict[str, str]) -> dict[str, str]:
    """An error as events carry it: type and message, no traceback."""
    return {"type": str(error.get("type", "")), "message": str(error.get("message", ""))}
