"""What the dashboard pages show, read through ivy's public pieces: queue sizes and dead letters,
live workers, stored notifications and the live statistics."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ivy.app import Ivy
from ivy.deadletters import DeadLetterInfo
from ivy.errors import MessageError
from ivy.message import decode_notification
from ivy.notifiers.base import Notifier
from ivy.timing.pause import paused_queues, set_paused
from ivy.worker.monitor import workers_report

from .collector import Collector

#: dead letters counted per queue on the overview; more show as "100+"
DEAD_COUNT_LIMIT = 100
#: dead letters listed on a queue's page
DEAD_PAGE_LIMIT = 500
#: seconds the overview (queue sizes, dead-letter counts, workers) is cached
REFRESH = 2.0
#: queues the overview lists (more are counted, not listed)
MAX_QUEUES = 200
#: workers the overview lists
MAX_WORKERS = 200
#: queue names of one worker's heartbeat shown (and taken into the queue list)
MAX_WORKER_QUEUES = 100
#: characters of a name (worker, queue, task, event field) shown; longer ones are cut
NAME_LIMIT = 200


def text(value: Any, limit: int = NAME_LIMIT) -> str | None:
    """A string or number from a heartbeat or event as text, cut to ``limit`` characters
    (ending with "…"); None for anything else (a list, an object, a bool, null)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        shown = value if isinstance(value, str) else repr(value)
    except ValueError:  # an int too long to print
        return None
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def count(value: Any) -> int | None:
    """A whole number from a heartbeat or event; None for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def stamp(value: Any) -> float | None:
    """A Unix time from a heartbeat or event; None for anything else, or a time no date can
    show (NaN, 1e300): the pages show "-"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        datetime.datetime.fromtimestamp(value, datetime.UTC)
        return float(value)
    except (OverflowError, ValueError, OSError):
        return None


def worker_row(beat: Any) -> dict[str, Any] | None:
    """What the overview shows of one heartbeat, each field type-checked (see :func:`text`,
    :func:`count`); at most :data:`MAX_WORKER_QUEUES` queue names, with ``queues_more`` the
    number left out. None for a heartbeat that is not an object."""
    if not isinstance(beat, dict):
        return None
    named = beat.get("queues")
    names = [q for q in named if isinstance(q, str)] if isinstance(named, list) else []
    return {
        "name": text(beat.get("name")) or "?",
        "queues": [text(q) for q in names[:MAX_WORKER_QUEUES]],
        "queues_more": max(0, len(names) - MAX_WORKER_QUEUES),
        "queue_url": text(beat.get("queue_url"), 1000),
        "in_flight": count(beat.get("in_flight")), "concurrency": count(beat.get("concurrency")),
        "processed": count(beat.get("processed")), "failed": count(beat.get("failed")),
        "events": beat.get("events") is True, "last_seen": stamp(beat.get("last_seen"))}


def failure_row(event: dict[str, Any]) -> dict[str, Any]:
    """What the failures page shows of one ``failed`` or ``dead_lettered`` event, each
    field type-checked."""
    error = event.get("error")
    return {
        "event": text(event.get("event")), "name": text(event.get("name")),
        "time": stamp(event.get("time")), "worker": text(event.get("worker")),
        "queue": text(event.get("queue")), "attempt": count(event.get("attempt")),
        "id": text(event.get("id")), "reason": text(event.get("reason"), 2000),
        "error": {"type": text(error.get("type")), "message": text(error.get("message"), 2000)}
        if isinstance(error, dict) else None}


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue of the overview; ``error`` says why its numbers are missing."""

    name: str
    size: int | None
    dead: int | None
    error: str | None = None
    #: whether the queue is paused (None: the notifier cannot say)
    paused: bool | None = None

    @property
    def dead_text(self) -> str:
        if self.dead is None:
            return "?"
        return f"{self.dead}+" if self.dead >= DEAD_COUNT_LIMIT else str(self.dead)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Dashboard:
    """The dashboard's view of one queue backend (``app``'s) and one notifier."""

    def __init__(self, app: Ivy, notifier: Notifier, queues: Sequence[str] = (), *,
                 collector: Collector | None = None, refresh: float = REFRESH) -> None:
        self.app = app
        self.notifier = notifier
        self.queues = list(dict.fromkeys(queues))
        self.collector = collector or Collector(notifier)
        self.refresh = refresh
        self._io = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._cache_lock = threading.Lock()
        self._tracebacks: dict[str, dict[str, Any]] = {}

    @property
    def queue_url(self) -> str:
        return self.app.queue_backend.url

    def start(self) -> Dashboard:
        self.collector.start()
        return self

    def close(self) -> None:
        self.collector.stop()

    # -- overview ------------------------------------------------------------------------------

    def queue_names(self, workers: list[dict[str, Any]] | None = None,
                    paused: Collection[str] = ()) -> list[str]:
        """The queues named with ``--queue``; else those the backend knows, with those the
        live workers of this backend consume (RabbitMQ cannot list its queues) and the
        ``paused`` ones."""
        if self.queues:
            return list(self.queues)
        backend = self.app.queue_backend
        with self._io:
            names = set(backend.queues()) | set(paused)
        for w in workers or []:
            if w.get("queue_url") in (None, backend.url):
                names.update(q for q in w["queues"] if q is not None and not q.endswith("…"))
        return sorted(names)

    def overview(self) -> dict[str, Any]:
        """Queues (size, dead-letter count), live workers and the events stream's state,
        at most ``refresh`` seconds old."""
        with self._cache_lock:
            if self._cache is not None and time.monotonic() - self._cache[0] < self.refresh:
                return self._cache[1]
            data = self._read_overview()
            self._cache = (time.monotonic(), data)
            return data

    def _read_overview(self) -> dict[str, Any]:
        with self._io:
            beats, workers_error = workers_report(self.notifier)
        workers = [row for row in map(worker_row, beats or []) if row is not None]
        paused = self._paused()
        rows = []
        backend = self.app.queue_backend
        names = self.queue_names(workers, paused or ())
        for name in names[:MAX_QUEUES]:
            state = None if paused is None else name in paused
            try:
                with self._io:
                    size = backend.size(name)
                    dead = len(backend.dead_letters(name, DEAD_COUNT_LIMIT))
                rows.append(QueueRow(name, size, dead, paused=state))
            except Exception as exc:
                rows.append(QueueRow(name, None, None, _error(exc), paused=state))
        return {"queues": rows, "queues_more": max(0, len(names) - MAX_QUEUES),
                "workers": workers[:MAX_WORKERS],
                "workers_more": max(0, len(workers) - MAX_WORKERS),
                "workers_error": workers_error}

    def _paused(self) -> set[str] | None:
        """The paused queues, at most :data:`MAX_QUEUES` (None: the notifier cannot say)."""
        try:
            with self._io:
                return set(paused_queues(self.notifier)[:MAX_QUEUES])
        except Exception:
            return None

    def live(self) -> dict[str, Any]:
        """What the overview page's stream sends every second, as JSON-ready data."""
        data = self.overview()
        c = self.collector
        return {
            "queues": [{"name": q.name, "size": q.size, "dead": q.dead_text, "error": q.error}
                       for q in data["queues"]],
            "queues_more": data["queues_more"], "workers": data["workers"],
            "workers_more": data["workers_more"], "workers_error": data["workers_error"],
            "paused": [q.name for q in data["queues"] if q.paused],
            "can_pause": any(q.paused is not None for q in data["queues"]),
            "series": c.series(), "events_seen": c.events_seen, "events_error": c.error}

    # -- dead letters --------------------------------------------------------------------------

    def dead_letters(self, queue: str, limit: int = DEAD_PAGE_LIMIT) -> list[DeadLetterInfo]:
        with self._io:
            return self.app.dead_letters(queue, limit)

    def requeue(self, queue: str, ids: Collection[str] | None) -> int:
        with self._io:
            count = self.app.requeue_dead(queue, ids)
        self._cache = None
        return count

    def purge(self, queue: str) -> int:
        with self._io:
            count = self.app.purge_dead(queue)
        self._cache = None
        return count

    # -- pausing queues ------------------------------------------------------------------------

    def set_paused(self, queue: str, paused: bool) -> bool:
        """Pause or resume ``queue`` (:func:`ivy.timing.pause.set_paused`)."""
        with self._io:
            changed = set_paused(self.notifier, queue, paused)
        self._cache = None
        return changed

    # -- failures and calls --------------------------------------------------------------------

    def failures(self) -> list[dict[str, Any]]:
        """The recent failures, newest first, each with ``traceback`` (or None) and
        ``final`` (the call's final status, None while it may run again) from the call's
        stored notification."""
        out = []
        for event in self.collector.failures():
            call_id = event.get("id")
            final = self._final(call_id) if isinstance(call_id, str) else {}
            error = final.get("error") or {}
            out.append({**failure_row(event), "final": final.get("status"),
                        "traceback": error.get("traceback") or None})
        return out

    def _final(self, call_id: str) -> dict[str, Any]:
        known = self._tracebacks.get(call_id)
        if known is not None:
            return known
        found = self.lookup(call_id)
        result = {"status": found["status"], "error": found["error"]} if found["stored"] else {}
        if result:
            if len(self._tracebacks) > 2 * self.collector.max_failures:
                self._tracebacks.clear()
            self._tracebacks[call_id] = result
        return result

    def lookup(self, call_id: str) -> dict[str, Any]:
        """What is known of call ``call_id``: ``stored`` (a final notification is stored),
        ``status``, ``result``, ``error`` and ``worker`` from it, ``problem`` (why it could
        not be read) and ``last_event`` (the last task event this dashboard saw of it)."""
        found: dict[str, Any] = {
            "id": call_id, "stored": False, "status": None, "result": None, "error": None,
            "worker": None, "name": None, "problem": None, "last_event": None}
        last = self.collector.last_event_of(call_id)
        if last is not None:
            found["last_event"] = {"event": text(last.get("event")),
                                   "time": stamp(last.get("time"))}
        try:
            with self._io:
                body = self.notifier.stored(call_id)
        except Exception as exc:
            found["problem"] = f"reading the notifier {self.notifier.url} failed: {_error(exc)}"
            return found
        if body is None:
            return found
        found["stored"] = True
        try:
            note = decode_notification(body, self.app.serializer, max_bytes=None,
                                       max_depth=self.app.max_depth, signer=self.app.signer)
        except MessageError as exc:
            found["problem"] = f"the stored notification could not be read: {exc}"
            return found
        found.update(status=note.status, result=note.result, error=note.error,
                     worker=note.worker, name=note.name)
        return found
