"""The workers an app started (``Ivy.listen``), with their heartbeats and task-event
publishers: started here, stopped on the app's ``close()``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ivy.config import parse_reserve_times
from ivy.middleware import Pipeline
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend
from ivy.task import Registry
from ivy.worker import Worker, WorkerContext
from ivy.worker.monitor import Heartbeat

log = logging.getLogger("ivy")


class Workers:
    """The running workers of one app, their heartbeats and event publishers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: list[Worker] = []
        self._heartbeats: list[Heartbeat] = []
        self._events: list[Any] = []  # ivy.middleware.events.Events

    def __iter__(self) -> Iterator[Worker]:
        """The workers running now (a snapshot)."""
        with self._lock:
            return iter(list(self._workers))

    def start(
        self, context: WorkerContext, backend: QueueBackend, notifier: Notifier,
        queues: list[str], *, concurrency: int, reserve_time: float,
        max_messages: int | None, max_memory: float | None, events: bool,
        heartbeat: float | None, block: bool,
    ) -> Worker:
        """Start a worker of ``queues`` on ``backend`` that reports through ``notifier``,
        with its heartbeat every ``heartbeat`` seconds (None: none) and, with ``events``,
        its task events; block until it stops if ``block``.

        Raises:
            ValueError: A bad option (checked before the worker takes its first message).
        """
        if events:
            context = self._with_events(context, notifier)
        worker = Worker(context, backend, notifier, queues, concurrency=concurrency,
                        reserve_time=reserve_time, max_messages=max_messages,
                        max_memory=max_memory)
        # every option is checked before the worker takes its first message
        beat = None if heartbeat is None else Heartbeat(worker, notifier, interval=heartbeat,
                                                         events=events)
        with self._lock:
            self._workers.append(worker)
        worker.start()
        if beat is not None:
            with self._lock:
                self._heartbeats.append(beat)
            beat.start()
        if block:
            worker.run_forever()
        return worker

    def _with_events(self, context: WorkerContext, notifier: Notifier) -> WorkerContext:
        """``context`` with the events middleware after the app's own: for one worker."""
        from ivy.middleware.events import Events

        events = Events(notifier)
        with self._lock:
            self._events.append(events)  # closed before the notifier is
        return replace(context, middleware=Pipeline([*context.middleware.middleware, events]))

    def stop(self) -> None:
        """Stop every worker, then close their event publishers (their last events go out
        before the notifier closes), then stop their heartbeats (their entries go too)."""
        with self._lock:
            workers, self._workers = self._workers, []
            heartbeats, self._heartbeats = self._heartbeats, []
            events, self._events = self._events, []
        for worker in workers:
            worker.stop()
        for publisher in events:
            publisher.close()
        for beat in heartbeats:
            beat.stop()


def message_options(registry: Registry, messages: Any) -> dict[str, float]:
    """``listen({"messages": {name: {"reserveTime": s}}})`` -> {name: s}, warning about
    names not registered."""
    reserve_times = parse_reserve_times(messages)
    for name in reserve_times:
        if registry.get(name) is None:
            log.warning("listen: messages names task %r, which is not registered here "
                        "(registered: %s)", name, ", ".join(registry.names()))
    return reserve_times


def queue_names(registry: Registry, queue: Any) -> list[str]:
    """The queues a worker listens on: ``queue`` (a name or several), else those of the
    registered tasks, else ``ivy``."""
    if queue is None:
        return sorted({t.queue for t in registry.tasks()}) or ["ivy"]
    if isinstance(queue, str):
        return [queue]
    return list(queue)


def check_time_limit(time_limit: object) -> float | None:
    """``time_limit`` as seconds; raises ValueError unless None or a number > 0."""
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or (
            time_limit <= 0):
        raise ValueError(f"time_limit {time_limit!r} must be a number of seconds > 0, or "
                         "None (no hard limit but the tasks' own)")
    return float(time_limit)


