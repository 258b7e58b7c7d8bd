"""``ivy inspect`` and ``ivy events``: queues, dead letters, live workers and task events."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import ivy
from ivy._process import Backoff, signal_handlers
from ivy.cli._common import existing_sqlite
from ivy.config import NOTIFIER_ENV, QUEUE_ENV, make_notifier
from ivy.stores import EventStream, Stream
from ivy.worker.monitor import live_queues, workers_report

log = logging.getLogger("ivy.monitor")


def inspect_command(args: argparse.Namespace) -> int:
    existing_sqlite(args.queue_url, QUEUE_ENV, "--queue-url")
    app = ivy.default
    backend = app.setup_queue(args.queue_url) if args.queue_url else app.queue_backend
    try:
        existing_sqlite(args.notifier_url, NOTIFIER_ENV, "--notifier-url")
        notifier = make_notifier(args.notifier_url)
        try:
            workers, workers_error = workers_report(notifier)
        finally:
            notifier.close()
        # a backend that cannot list its queues (RabbitMQ): those its live workers consume
        names = args.queue or backend.queues() or live_queues(workers, backend.url)
        report: list[dict[str, Any]] = []
        for name in names:
            dead = backend.dead_letters(name, args.limit)
            report.append({
                "queue": name, "size": backend.size(name), "dead_letters": [
                    {"reason": d.reason, "time": d.time, "body": _preview(d.body)} for d in dead]})
        if args.json:
            print(json.dumps({"queue_backend": backend.url, "queues": report,
                              "notifier": notifier.url, "workers": workers,
                              "workers_error": workers_error}, indent=2))
            return 0
        print(f"notifier {notifier.url}: " + (
            f"workers unknown: {workers_error}" if workers is None else
            f"{len(workers)} worker(s) alive"))
        for line in worker_lines(workers or []):
            print(line)
        print(f"queue backend {backend.url}")
        if not report:
            print("  no queues known to this backend (RabbitMQ cannot list them) nor "
                  "consumed by a live worker: name them with --queue NAME")
        for entry in report:
            dead_letters = entry["dead_letters"]
            print(f"  {entry['queue']}: {entry['size']} waiting or running, "
                  f"{len(dead_letters)} dead letter(s) shown")
            for d in dead_letters:
                print(f"    - {d['reason']}\n      {d['body']}")
        return 0
    finally:
        app.close()


def _preview(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[:limit] + "..."


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


def tail_events(notifier: EventStream, out: TextIO, *, as_json: bool = False,
                stop: threading.Event | None = None,
                ready: Callable[[], None] | None = None) -> None:
    """Print the task events published on ``notifier`` as they come (one per line, as JSON
    with ``as_json``), until ``stop`` is set. ``ready`` runs once the subscription is open.
    A lost connection is logged and the subscription opened again (what was published in
    between is missed: events are a live stream)."""
    stop = stop or threading.Event()
    sub: Stream | None = notifier.subscribe_events()
    if ready is not None:
        ready()
    backoff = Backoff()
    try:
        while not stop.is_set():
            if sub is None:
                try:
                    sub = notifier.subscribe_events()
                    log.warning("events: subscribed again to %s; events published while "
                                "disconnected were missed", notifier.url)
                    backoff.reset()
                except Exception as exc:
                    log.warning("events: subscribing to %s failed (%s); trying again in "
                                "%.1f s", notifier.url, exc, backoff.delay)
                    backoff.wait(stop)
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


def events_command(notifier: EventStream, *, as_json: bool) -> int:
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
