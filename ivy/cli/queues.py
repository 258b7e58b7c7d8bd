"""``ivy queue``: pause and resume queues, and show whether they are paused
(:mod:`ivy.timing.pause`)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

import ivy
from ivy.app import Ivy
from ivy.cli._common import existing_sqlite
from ivy.config import NOTIFIER_ENV, QUEUE_ENV
from ivy.errors import IvyError

log = logging.getLogger("ivy.cli")


def add_parser(sub: Any, backends: Callable[..., None]) -> None:
    """Register ``ivy queue`` on the CLI's subparsers; ``backends(parser)`` adds the CLI's
    shared options (--queue-url, --notifier-url, --log-level)."""
    queue = sub.add_parser(
        "queue", help="pause or resume a queue, or show which are paused",
        description="Pause and resume queues. A paused queue still takes sends; every worker "
                    "sharing the notifier stops fetching from it within about a second "
                    "(the calls running end as usual) until it is resumed. The pause is kept "
                    "in the notifier's store (memory, SQLite, Redis or PostgreSQL), so it "
                    "survives worker restarts.")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    pause = actions.add_parser("pause", help="stop the workers fetching from a queue")
    resume = actions.add_parser("resume", help="let the workers fetch from a queue again")
    status = actions.add_parser(
        "status", help="show whether queues are paused, and their sizes",
        description="Show whether QUEUE (default: every queue the backend knows, and every "
                    "paused one) is paused, and how many messages it holds where the backend "
                    "can tell.")
    for p in (pause, resume):
        p.add_argument("queue", metavar="QUEUE", help="queue name")
    status.add_argument("queue", nargs="?", metavar="QUEUE", help="queue name")
    for p in (pause, resume, status):
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        backends(p, log_level="WARNING")


def run(args: argparse.Namespace) -> int:
    """``ivy queue ACTION``: 0 on success."""
    existing_sqlite(args.notifier_url, NOTIFIER_ENV, "--notifier-url")
    if args.action == "status":
        existing_sqlite(args.queue_url, QUEUE_ENV, "--queue-url")
    app = ivy.Ivy(args.queue_url, args.notifier_url)
    try:
        if args.action == "status":
            return _status(app, args)
        paused = args.action == "pause"
        try:
            changed = app.pause_queue(args.queue) if paused else app.resume_queue(args.queue)
        except IvyError:
            raise
        except ValueError as exc:  # not a queue name
            raise IvyError(str(exc)) from None
        if args.json:
            print(json.dumps({"queue": args.queue, "paused": paused, "changed": changed}))
        elif changed:
            print(f"{'paused' if paused else 'resumed'} queue {args.queue!r}")
        else:
            print(f"queue {args.queue!r} was {'paused' if paused else 'not paused'} already")
        return 0
    finally:
        app.close()


def _size(app: Ivy, queue: str) -> int | None:
    try:
        return app.queue_backend.size(queue)
    except NotImplementedError:
        log.debug("the backend cannot count queue %s", queue, exc_info=True)
        return None


def _status(app: Ivy, args: argparse.Namespace) -> int:
    paused = set(app.paused_queues())
    queues = [args.queue] if args.queue else sorted(
        set(app.queue_backend.queues()) | paused)
    rows = [{"queue": q, "paused": q in paused, "size": _size(app, q)} for q in queues]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no queues known to {app.queue_backend.url} (RabbitMQ cannot list them), and "
              "none paused: name one, as in 'ivy queue status QUEUE'")
        return 0
    table = [("QUEUE", "STATE", "MESSAGES")] + [
        (str(r["queue"]), "paused" if r["paused"] else "active",
         "?" if r["size"] is None else str(r["size"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(2)]
    for name, state, size in table:
        print(f"{name.ljust(widths[0])}  {state.ljust(widths[1])}  {size}")
    return 0
