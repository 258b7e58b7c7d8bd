"""The dashboard's live statistics, read from the task events stream: tasks per second over a
sliding window, the recent failures, and the last event of each recent call."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ivy._process import Backoff
from ivy.stores import EventStream, Stream

log = logging.getLogger("ivy.dashboard")

#: seconds of per-second counts the chart shows
WINDOW = 300
#: failures (``failed`` and ``dead_lettered`` events) kept for the failures page
MAX_FAILURES = 200
#: calls whose last event is kept for the call lookup
MAX_CALLS = 10_000


class Collector:
    """Counts task events per second and keeps the recent failures (docs/internals/dashboard.md)."""

    def __init__(self, notifier: EventStream, *, window: int = WINDOW,
                 max_failures: int = MAX_FAILURES,
                 clock: Callable[[], float] = time.time) -> None:
        if window < 1:
            raise ValueError(f"window {window!r} must be a whole number of seconds >= 1")
        self.notifier = notifier
        self.window = window
        self.max_failures = max_failures
        self._clock = clock
        self._lock = threading.Lock()
        self._seconds: dict[int, list[int]] = {}  # second -> [succeeded, failed]
        self._failures: deque[dict[str, Any]] = deque(maxlen=max_failures)
        self._calls: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: events read since the start, and the time of the last one (None: none yet)
        self.events_seen = 0
        self.last_event: float | None = None
        #: why the events stream cannot be read (None while it can)
        self.error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the stream --------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Collector:
        """Start reading; returns once the subscription is open (or failed to open)."""
        self._thread = threading.Thread(target=self._run, name="ivy-dashboard-events",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        sub: Stream | None = None
        backoff = Backoff()
        try:
            while not self._stop.is_set():
                if sub is None:
                    try:
                        sub = self.notifier.subscribe_events()
                    except NotImplementedError as exc:
                        self.error = str(exc)
                        return
                    except Exception as exc:
                        self.error = (f"subscribing to the events of {self.notifier.url} "
                                      f"failed: {type(exc).__name__}: {exc}")
                        log.warning("dashboard: %s; trying again in %.1f s", self.error,
                                    backoff.delay)
                        self._ready.set()
                        backoff.wait(self._stop)
                        continue
                    self.error = None
                    backoff.reset()
                    self._ready.set()
                try:
                    bodies = sub.get(0.5)
                except Exception as exc:
                    log.warning("dashboard: the events subscription to %s failed (%s: %s); "
                                "subscribing again", self.notifier.url, type(exc).__name__, exc)
                    sub.close()
                    sub = None
                    continue
                for body in bodies:
                    self.add(body)
        finally:
            self._ready.set()
            if sub is not None:
                sub.close()

    def add(self, body: bytes) -> None:
        """Count one event body (a JSON object); anything else is passed over."""
        try:
            event = json.loads(body)
        except ValueError:
            log.debug("dashboard: passed over an event that is not JSON: %r", body[:200])
            return
        if not isinstance(event, dict):
            return
        now = self._clock()
        kind = event.get("event")
        with self._lock:
            self.events_seen += 1
            self.last_event = now
            if kind in ("succeeded", "failed"):
                second = int(now)
                counts = self._seconds.setdefault(second, [0, 0])
                counts[0 if kind == "succeeded" else 1] += 1
                self._prune(second)
            if kind in ("failed", "dead_lettered"):
                self._failures.appendleft({**event, "seen": now})
            call_id = event.get("id")
            if isinstance(call_id, str):
                self._calls[call_id] = event
                self._calls.move_to_end(call_id)
                while len(self._calls) > MAX_CALLS:
                    self._calls.popitem(last=False)

    def _prune(self, now: int) -> None:
        oldest = now - self.window
        for second in [s for s in self._seconds if s <= oldest]:
            del self._seconds[second]

    # -- what the pages read -------------------------------------------------------------------

    def series(self) -> dict[str, Any]:
        """Per-second counts of the last ``window`` seconds, oldest first, ending with the
        second that just ended: ``{"end", "succeeded": [...], "failed": [...]}``."""
        end = int(self._clock()) - 1
        seconds = range(end - self.window + 1, end + 1)
        with self._lock:
            counts = [self._seconds.get(s, (0, 0)) for s in seconds]
        return {"end": end, "succeeded": [c[0] for c in counts],
                "failed": [c[1] for c in counts]}

    def failures(self) -> list[dict[str, Any]]:
        """The recent ``failed`` and ``dead_lettered`` events, newest first."""
        with self._lock:
            return list(self._failures)

    def last_event_of(self, call_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._calls.get(call_id)
