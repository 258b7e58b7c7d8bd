"""``ivy dead``: list, show, requeue and purge dead letters."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import ivy
from ivy.app import Ivy
from ivy.cli._common import existing_sqlite
from ivy.config import NOTIFIER_ENV, QUEUE_ENV, make_notifier, mask_url
from ivy.deadletters import SEARCH_LIMIT, dead_letters, find, purge_dead, requeue_ids, resolve
from ivy.errors import IvyError
from ivy.worker.monitor import live_queues, workers_report


def add_parser(sub: Any, backends: Callable[..., None]) -> None:
    """Register ``ivy dead`` on the CLI's subparsers; ``backends(parser, notifier=False)``
    adds the CLI's shared options (--queue-url, --log-level)."""
    dead = sub.add_parser(
        "dead", help="list, show, requeue or purge dead letters",
        description="Dead letters: messages set aside with a reason (bad input, retries "
                    "used up). A dead letter is named by its id (see 'list') or by its call "
                    "id.")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the dead letters of a queue, or of all")
    listing.add_argument("--limit", type=int, default=100, metavar="N",
                         help="the N most recent (default 100)")
    show = actions.add_parser("show", help="show one dead letter in full")
    show.add_argument("ident", metavar="ID", help="dead letter id or call id")
    requeue = actions.add_parser(
        "requeue", help="put dead letters back on their queue, attempts reset")
    requeue.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids or call ids")
    requeue.add_argument("--all", action="store_true", help="every dead letter of the queue")
    purge = actions.add_parser("purge", help="delete every dead letter of a queue")
    purge.add_argument("--yes", "-y", action="store_true",
                       help="do not ask for confirmation (it is asked only on a terminal)")
    for p, needs_queue in ((listing, False), (show, False), (requeue, True), (purge, True)):
        p.add_argument("--queue", "-Q", required=needs_queue, metavar="NAME", help=(
            "queue name" if needs_queue else
            "queue name (default: every queue the backend knows; on RabbitMQ, which cannot "
            "list them, every queue its live workers consume, from their heartbeats)"))
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        backends(p, notifier=False)
        if not needs_queue:
            p.add_argument("--notifier-url", metavar="URL", help=(
                "where to read the workers' heartbeats when the backend cannot list its "
                "queues (default: $IVY_NOTIFIER_URL, else an amqp:// queue URL itself)"))


def run(args: argparse.Namespace) -> int:
    """``ivy dead ACTION``: 0 on success, 1 when a named dead letter is not found."""
    existing_sqlite(args.queue_url, QUEUE_ENV, "--queue-url")
    app = ivy.default
    if args.queue_url:
        app.setup_queue(args.queue_url)
    try:
        if args.action == "list":
            return _list(app, args)
        if args.action == "show":
            return _show(app, args)
        if args.action == "requeue":
            return _requeue(app, args)
        return _purge(app, args)
    finally:
        app.close()


def _when(stamp: float) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="seconds")


def _list(app: Ivy, args: argparse.Namespace) -> int:
    queues = _queues(app, args)  # without --queue: every queue, each with its --limit
    letters = [d for q in queues for d in dead_letters(app, q, args.limit)]
    if args.json:
        print(json.dumps([d.to_dict() for d in letters], indent=2))
        return 0
    if not letters:
        where = ", ".join(repr(q) for q in queues) or "(none)"
        print(f"no dead letters in queue(s) {where} of {app.queue_backend.url}")
        return 0
    several = args.queue is None
    rows = [((d.queue,) if several else ()) + (
        d.id, _when(d.time), d.name or "?", d.call_id or "-", _one_line(d.reason, 60),
        d.args_preview()) for d in letters]
    header = (("QUEUE",) if several else ()) + (
        "ID", "TIME (UTC)", "TASK", "CALL ID", "REASON", "ARGS")
    last = len(header) - 1
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(last)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
              + "  " + row[last])
    return 0


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _queues(app: Ivy, args: argparse.Namespace) -> list[str]:
    """``--queue``, or every queue the backend lists, or (RabbitMQ cannot list them) every
    queue that its live workers consume, from their heartbeats."""
    if args.queue:
        return [args.queue]
    backend = app.queue_backend
    names = backend.queues()
    if names:
        return names
    raw_url = args.queue_url or os.environ.get(QUEUE_ENV) or ""  # backend.url is masked
    names, why = _heartbeat_queues(backend.url, raw_url, getattr(args, "notifier_url", None))
    if not names:
        raise IvyError(f"the queue backend {backend.url} cannot list its queues (RabbitMQ "
                       f"cannot without the management plugin), and {why}: name the queue "
                       "with --queue NAME")
    return names


def _heartbeat_queues(queue_url: str, raw_queue_url: str,
                      notifier_url: str | None) -> tuple[list[str], str]:
    """(the queues live workers consume on ``queue_url`` (masked), why there are none)."""
    url = notifier_url or os.environ.get(NOTIFIER_ENV) or (
        raw_queue_url if raw_queue_url.startswith(("amqp://", "amqps://")) else None)
    if url is None:
        return [], "no notifier to read heartbeats from was given (--notifier-url)"
    notifier = make_notifier(url)
    try:
        workers, error = workers_report(notifier)
    finally:
        notifier.close()
    if workers is None:
        return [], str(error)
    return live_queues(workers, queue_url), (
        f"no live worker of it sends heartbeats to {mask_url(url)}")


def _show(app: Ivy, args: argparse.Namespace) -> int:
    queues = _queues(app, args)
    found = [d for q in queues for d in find(app, q, args.ident)]
    if not found:
        where = ", ".join(repr(q) for q in queues)
        print(f"ivy: no dead letter with id or call id {args.ident!r} in queue(s) {where} "
              f"(the {SEARCH_LIMIT} most recent of each were searched); list them with "
              "'ivy dead list --queue NAME'", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([d.to_dict(full=True) for d in found], indent=2))
        return 0
    for d in found:
        print(f"dead letter {d.id} of queue {d.queue!r}")
        print(f"  time:     {_when(d.time)}")
        print(f"  reason:   {d.reason}")
        if d.call_id is None:
            print("  body (not a readable ivy message):")
            print("    " + d.body.decode("utf-8", "backslashreplace"))
            continue
        print(f"  call id:  {d.call_id}")
        print(f"  task:     {d.name}")
        print(f"  attempt:  {d.attempt_text()}")
        print(f"  reply to: {d.reply_to or '-'}")
        print(f"  signed:   {'yes' if d.signed else 'no'}")
        print(f"  args:     {json.dumps(d.args, ensure_ascii=False)}")
        print(f"  kwargs:   {json.dumps(d.kwargs, ensure_ascii=False)}")
    return 0


def _requeue(app: Ivy, args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise IvyError("ivy dead requeue: name dead letters (ids or call ids) or give --all, "
                       "not both and not neither")
    if args.all:
        count = requeue_ids(app, args.queue, None)
        named: list[str] = []
    else:
        named = resolve(dead_letters(app, args.queue, SEARCH_LIMIT), args.ids)
        count = requeue_ids(app, args.queue, named)
    short = len(named) - count if named else 0
    if args.json:
        print(json.dumps({"queue": args.queue, "requeued": count}))
    else:
        print(f"requeued {count} dead letter(s) to queue {args.queue!r}")
    if short > 0:
        print(f"ivy: {short} of the {len(named)} dead letter(s) named were not found in queue "
              f"{args.queue!r}; list them with 'ivy dead list --queue {args.queue}'",
              file=sys.stderr)
    return 1 if short > 0 else 0


def _purge(app: Ivy, args: argparse.Namespace) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input(f"delete every dead letter of queue {args.queue!r} on "
                       f"{app.queue_backend.url}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    count = purge_dead(app, args.queue)
    if args.json:
        print(json.dumps({"queue": args.queue, "purged": count}))
    else:
        print(f"purged {count} dead letter(s) of queue {args.queue!r}")
    return 0
