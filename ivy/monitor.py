"""Live workers and task events: the heartbeat a worker writes to the notifier, and what
``ivy inspect`` and ``ivy events`` print from it.

Every worker started by ``listen`` (so every ``ivy worker`` process) writes a heartbeat every
``interval`` seconds (default :data:`HEARTBEAT_INTERVAL`) with a TTL of :data:`TTL_FACTOR`
intervals: name, host, pid, queues, concurrency, processed, failed, in flight, started and last
seen. A worker that stops removes its entry; a killed one drops out when its TTL runs out. The
heartbeats live in the notifier's store (see :meth:`ivy.notifiers.base.Notifier.put_worker`), so
``ivy inspect`` sees the workers of every host that shares the notifier.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from ivy.notifiers.base import Notifier, Subscription
from ivy.worker import Worker, signal_handlers

log = logging.getLogger("ivy.monitor")

#: seconds between two heartbeats of a worker
HEARTBEAT_INTERVAL = 5.0
#: a heartbeat is kept this many intervals: a worker missing two in a row still counts as alive
TTL_FACTOR = 3
#: how often the heartbeat thread looks whether it should stop
_TICK = 0.25
#: numbers the heartbeats of one process: a second worker in it is ``host:pid#2``
_sequence = itertools.count(1)


class Heartbeat:
    """Writes ``worker``'s heartbeat to ``notifier`` every ``interval`` seconds from a daemon
    thread, until the worker stops or :meth:`stop` is called; then removes it."""

    def __init__(self, worker: Worker, notifier: Notifier, *,
                 interval: float = HEARTBEAT_INTERVAL, events: bool = False) -> None:
        if (isinstance(interval, bool) or not isinstance(interval, (int, float))
                or not 0 < interval < float("inf")):
            raise ValueError(f"heartbeat interval {interval!r} must be a number of seconds > 0 "
                             "(heartbeat=None writes none)")
        self.worker = worker
        self.notifier = notifier
        number = next(_sequence)
        #: the name the heartbeat is kept under: the worker's, unique in this process
        self.name = worker.name if number == 1 else f"{worker.name}#{number}"
        self.interval = float(interval)
        self.ttl = self.interval * TTL_FACTOR
        self.events = events
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def info(self) -> dict[str, Any]:
        """The heartbeat as written: what ``ivy inspect`` shows of a worker."""
        w = self.worker
        return {
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
            "queues": list(w.queues), "concurrency": w.concurrency,
            "processed": w.processed, "failed": w.failed, "in_flight": w.in_flight,
            "started": self.started, "last_seen": time.time(), "interval": self.interval,
            "queue_url": w.backend.url, "events": self.events}

    def beat(self) -> bool:
        """Write one heartbeat; False if this notifier cannot keep them (then stop trying)."""
        try:
            self.notifier.put_worker(self.name, self.info(), self.ttl)
        except NotImplementedError as exc:
            log.info("worker %s: no heartbeats: %s", self.name, exc)
            return False
        except Exception as exc:
            if not self._failing:  # once per failing streak, not every interval
                log.warning("worker %s: writing its heartbeat to %s failed (%s: %s); "
                            "trying again every %.0f s", self.name, self.notifier.url,
                            type(exc).__name__, exc, self.interval)
            self._failing = True
            return True
        if self._failing:
            log.info("worker %s: heartbeats written again", self.name)
        self._failing = False
        return True

    def start(self) -> Heartbeat:
        if not self.beat():
            return self
        self._thread = threading.Thread(target=self._run, name="ivy-worker-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval
        try:
            while not self._stop.is_set() and not self.worker.wait_stopped(_TICK):
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    if not self.beat():
                        return
        finally:
            try:
                self.notifier.remove_worker(self.name)
            except Exception:
                log.warning("worker %s: removing its heartbeat failed; it expires in %.0f s",
                            self.name, self.ttl, exc_info=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating and remove the heartbeat (the thread does, before this returns)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


# -- what the command line prints ----------------------------------------------------------

def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def worker_lines(workers: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """``ivy inspect``'s lines for the live workers (heartbeats as :meth:`Heartbeat.info`
    writes them; a field another writer left out prints as ``?``)."""
    now = time.time() if now is None else now
    lines = []
    for w in workers:
        def num(key: str, info: dict[str, Any] = w) -> Any:
            return info.get(key, "?")

        queues = ", ".join(map(str, w.get("queues") or [])) or "?"
        up = _ago(now - w["started"]) if isinstance(w.get("started"), (int, float)) else "?"
        seen = (_ago(now - w["last_seen"]) + " ago"
                if isinstance(w.get("last_seen"), (int, float)) else "?")
        lines.append(f"  {w.get('name', '?')}: queues {queues}; {num('in_flight')} of "
                     f"{num('concurrency')} busy; {num('processed')} processed, "
                     f"{num('failed')} failed; up {up}, last seen {seen}"
                     f"{'; events on' if w.get('events') else ''}")
    return lines


def format_event(event: dict[str, Any]) -> str:
    """One line of ``ivy events`` for an event (see :mod:`ivy.middleware.events`)."""
    when = event.get("time")
    stamp = (datetime.fromtimestamp(when).strftime("%H:%M:%S.%f")[:-3]
             if isinstance(when, (int, float)) else "?")
    line = (f"{stamp} {event.get('event', '?'):<13} {event.get('name') or '?'} "
            f"[{event.get('id') or '?'}] queue {event.get('queue') or '?'} on "
            f"{event.get('worker') or '?'}")
    attempt = event.get("attempt")
    if isinstance(attempt, int) and attempt > 0:
        line += f", attempt {attempt + 1}"
    if isinstance(event.get("runtime"), (int, float)):
        line += f" in {event['runtime']:.3f} s"
    if isinstance(event.get("delay"), (int, float)):
        line += f", again in {event['delay']:.2f} s"
    error = event.get("error")
    if isinstance(error, dict):
        line += f": {error.get('type')}: {error.get('message')}"
    if event.get("reason"):
        line += f": {event['reason']}"
    return line


def tail_events(notifier: Notifier, out: TextIO, *, as_json: bool = False,
                stop: threading.Event | None = None,
                ready: Callable[[], None] | None = None) -> None:
    """Print the task events published on ``notifier`` as they come (one per line, as JSON
    with ``as_json``), until ``stop`` is set. ``ready`` runs once the subscription is open.
    A lost connection is logged and the subscription opened again (what was published in
    between is missed: events are a live stream)."""
    stop = stop or threading.Event()
    sub: Subscription | None = notifier.subscribe_events()
    if ready is not None:
        ready()
    delay = 0.1
    try:
        while not stop.is_set():
            if sub is None:
                try:
                    sub = notifier.subscribe_events()
                    log.warning("events: subscribed again to %s; events published while "
                                "disconnected were missed", notifier.url)
                    delay = 0.1
                except Exception as exc:
                    log.warning("events: subscribing to %s failed (%s); trying again in "
                                "%.1f s", notifier.url, exc, delay)
                    stop.wait(delay)
                    delay = min(delay * 2, 10.0)
                    continue
            try:
                bodies = sub.get(0.5)
            except Exception as exc:
                log.warning("events: the subscription to %s failed (%s: %s)", notifier.url,
                            type(exc).__name__, exc)
                sub.close()
                sub = None
                continue
            for body in bodies:
                _print_event(body, out, as_json)
    finally:
        if sub is not None:
            sub.close()


def _print_event(body: bytes, out: TextIO, as_json: bool) -> None:
    try:
        event = json.loads(body)
    except ValueError:
        log.warning("events: passed over a body that is not JSON: %r", body[:200])
        return
    if not isinstance(event, dict):
        log.warning("events: passed over a body that is not a JSON object: %r", body[:200])
        return
    out.write((json.dumps(event) if as_json else format_event(event)) + "\n")
    out.flush()


def events_command(notifier: Notifier, *, as_json: bool) -> int:
    """``ivy events``: print task events as they come until SIGINT or SIGTERM; exit 0."""
    stop = threading.Event()

    def ready() -> None:
        print(f"ivy events: listening on {notifier.url} (Ctrl-C to stop); workers publish "
              "events when started with --events", file=sys.stderr, flush=True)

    with signal_handlers(lambda signum, frame: stop.set()):
        try:
            tail_events(notifier, sys.stdout, as_json=as_json, stop=stop, ready=ready)
        except BrokenPipeError:  # `ivy events | head`: the reader is gone
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more is written
    return 0


def workers_report(notifier: Notifier) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``ivy inspect``'s workers: (the heartbeats, None), or (None, why they are missing)."""
    try:
        return notifier.workers(), None
    except NotImplementedError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"reading worker heartbeats from {notifier.url} failed: " \
                     f"{type(exc).__name__}: {exc}"


def live_queues(workers: list[dict[str, Any]] | None, queue_url: str) -> list[str]:
    """The queues that the live workers of ``workers`` (heartbeats) consume on ``queue_url``,
    in the order first named: what a backend that cannot list its queues (RabbitMQ without
    the management plugin) is asked about."""
    return list(dict.fromkeys(
        str(q) for w in workers or [] if w.get("queue_url") == queue_url
        for q in w.get("queues") or []))

