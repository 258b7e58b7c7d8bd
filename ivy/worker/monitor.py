"""Live workers and task events: the heartbeat a worker writes to the notifier, and what
``ivy inspect`` and ``ivy events`` print from it."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ivy.queues.base import QueueBackend
from ivy.stores import WorkerRegistry

log = logging.getLogger("ivy.monitor")

#: seconds between two heartbeats of a worker
HEARTBEAT_INTERVAL = 5.0
#: a heartbeat is kept this many intervals: a worker missing two in a row still counts as alive
TTL_FACTOR = 3
#: how often the heartbeat thread looks whether it should stop
_TICK = 0.25
#: numbers the heartbeats of one process: a second worker in it is ``host:pid#2``
_sequence = itertools.count(1)


class Paused(Protocol):
    @property
    def paused(self) -> frozenset[str]:
        """The worker's queues it saw paused at its last look."""


class Beating(Protocol):
    """What a heartbeat reads of its worker (:class:`ivy.Worker`)."""

    name: str
    concurrency: int

    @property
    def processed(self) -> int:
        """Deliveries processed so far."""

    @property
    def failed(self) -> int:
        """Task runs that failed, and messages dead-lettered."""

    @property
    def queues(self) -> Sequence[str]:
        """The queues the worker consumes."""

    @property
    def in_flight(self) -> int:
        """Deliveries the worker holds now."""

    @property
    def backend(self) -> QueueBackend:
        """The worker's queue backend."""

    @property
    def pauses(self) -> Paused:
        """Which of its queues the worker sees paused (:mod:`ivy.timing.pause`)."""

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the worker to stop; whether it did."""


class Heartbeat:
    """Writes ``worker``'s heartbeat to ``notifier`` every ``interval`` seconds from a daemon
    thread, until the worker stops or :meth:`stop` is called; then removes it."""

    def __init__(self, worker: Beating, notifier: WorkerRegistry, *,
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
            "queue_url": w.backend.url, "events": self.events,
            "paused": sorted(w.pauses.paused)}

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


def workers_report(notifier: WorkerRegistry) -> tuple[list[dict[str, Any]] | None, str | None]:
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

