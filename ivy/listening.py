"""``Ivy.listen``: start a worker of an app, with its heartbeat and, when asked, its task
events. The app keeps the workers and heartbeats it started and stops them on ``close()``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ivy.config import Spec, make_queue_backend, parse_reserve_times
from ivy.middleware import Pipeline
from ivy.monitor import Heartbeat
from ivy.worker import Worker, WorkerContext

if TYPE_CHECKING:
    from ivy.app import Ivy

log = logging.getLogger("ivy")


def start_worker(
    app: Ivy, queue_url: Spec, *, queue: str | Iterable[str] | None, concurrency: int,
    block: bool, reserve_time: float | None, notifier: Spec, max_messages: int | None,
    events: bool, heartbeat: float | None, max_memory: float | None = None,
    time_limit: float | None = None,
) -> Worker:
    """What :meth:`ivy.Ivy.listen` documents."""
    app._check_open()
    reserve_times: dict[str, float] = {}
    if isinstance(queue_url, Mapping):
        queue_url = dict(queue_url)
        if "queue" in queue_url:
            queue = queue or queue_url.pop("queue")
        reserve_times = message_options(app, queue_url.pop("messages", None))
    backend = app._own(queue_url, make_queue_backend) if queue_url is not None else (
        app.queue_backend)
    if notifier is not None or app._producer_notifier is None:
        app.start_notification_producer(notifier)
    if queue is None:
        registry = app.registry
        names = sorted({t.queue for t in (registry.get(n) for n in registry.names())
                        if t is not None}) or ["ivy"]
    elif isinstance(queue, str):
        names = [queue]
    else:
        names = list(queue)
    context = app.worker_context(reserve_times)
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or (
                time_limit <= 0):
            raise ValueError(f"time_limit {time_limit!r} must be a number of seconds > 0, or "
                             "None (no hard limit but the tasks' own)")
        context = dataclasses.replace(context, time_limit=float(time_limit))
    if events:
        context = with_events(app, context)
    worker = Worker(context, backend, app._producer_notifier, names,
                    concurrency=concurrency, reserve_time=reserve_time or app.reserve_time,
                    max_messages=max_messages, max_memory=max_memory)
    # every option is checked before the worker takes its first message (a bad heartbeat
    # interval used to fail after tasks had run)
    beat = None if heartbeat is None else make_heartbeat(app, worker, heartbeat, events)
    app._workers.append(worker)
    worker.start()
    if beat is not None:
        with app._lock:
            app._heartbeats.append(beat)
        beat.start()
    if block:
        worker.run_forever()
    return worker


def message_options(app: Ivy, messages: Any) -> dict[str, float]:
    """``listen({"messages": {name: {"reserveTime": s}}})`` -> {name: s}."""
    reserve_times = parse_reserve_times(messages)
    for name in reserve_times:
        if app.registry.get(name) is None:
            log.warning("listen: messages names task %r, which is not registered here "
                        "(registered: %s)", name, ", ".join(app.registry.names()))
    return reserve_times


def with_events(app: Ivy, context: WorkerContext) -> WorkerContext:
    """``context`` with the events middleware after the app's own: for one worker."""
    from ivy.middleware.events import Events

    assert app._producer_notifier is not None
    events = Events(app._producer_notifier)
    with app._lock:
        app._events.append(events)  # closed before the notifier is
    return replace(context, middleware=Pipeline([*app.middleware.middleware, events]))


def make_heartbeat(app: Ivy, worker: Worker, interval: float, events: bool) -> Heartbeat:
    """The heartbeat of ``worker`` (not started); raises ValueError for a bad interval."""
    assert app._producer_notifier is not None
    return Heartbeat(worker, app._producer_notifier, interval=interval, events=events)
