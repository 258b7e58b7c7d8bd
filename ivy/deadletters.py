"""Dead-letter tools: list, show, requeue and purge the dead letters of a queue, on every
backend, from the API (``app.dead_letters``, ``app.requeue_dead``, ``app.purge_dead``) and the
command line (``ivy dead list|show|requeue|purge``).

The queue backends move the messages (each says what is atomic and what is at least once);
this module reads the bodies, best effort: a dead letter is often a message that could not be
decoded, so every field read from the body may be None. A dead letter is named by its ``id``,
the backend's handle (a row id, a broker message id), or by the call id in its body, which is
what a producer knows (``call.id``, the output of ``ivy call``): the tools take either.

Requeueing puts the original message back with its attempts reset: a valid v1 body is
re-encoded with ``attempt`` 0, and signed again with the app's signing key when it was signed.
A body that cannot be read, or that was signed and that the app cannot verify and sign again
(no key, another key), goes back byte for byte: the tools never sign what they did not
verify, nor a body that was not signed. The backends make a fresh message, so a delivery
count starts again too. A requeued call keeps its id: if its producer already got a final
notification (the task failed all its attempts, or the message was rejected with
``MessageRejected``), the notifier keeps that first one and the new outcome reaches nobody;
the task still runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivy.errors import IvyError, MessageError
from ivy.message import decode_message
from ivy.queues.base import DeadLetter
from ivy.serialization import Serializer, Signer, unwrap

if TYPE_CHECKING:
    from ivy.app import Ivy

#: How many of the most recent dead letters are searched for a call id.
SEARCH_LIMIT = 1000
#: Characters of the arguments that ``ivy dead list`` shows.
ARGS_PREVIEW = 60


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """A dead letter with what could be read from its body (None where it could not)."""

    id: str
    queue: str
    reason: str
    time: float
    body: bytes
    call_id: str | None = None
    name: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    #: the message's ``attempt`` field: retries before this run, counting from 0 (the
    #: attempt shown to people is this + 1; see :meth:`attempt_text`)
    attempt: int | None = None
    #: the message's ``max_retries``: it may run ``max_retries + 1`` times in all
    max_retries: int | None = None
    reply_to: str | None = None
    #: whether the body is in a signature envelope (not whether the signature is valid)
    signed: bool = False

    def args_preview(self, limit: int = ARGS_PREVIEW) -> str:
        """The first characters of the arguments as JSON (of the body when unreadable)."""
        if self.args is None:
            text = self.body.decode("utf-8", "backslashreplace")
        else:
            parts = [json.dumps(a, ensure_ascii=False) for a in self.args]
            parts += [f"{k}={json.dumps(v, ensure_ascii=False)}"
                      for k, v in (self.kwargs or {}).items()]
            text = ", ".join(parts)
        return text if len(text) <= limit else text[:limit - 3] + "..."

    def attempt_text(self) -> str:
        """"attempt N of M", counting from 1, as a failed task's reason ("failed N times")
        and ``ivy events`` ("attempt N") count: the run that led here was the N-th of at most
        M. "?" for an unreadable body."""
        if self.attempt is None:
            return "?"
        of = "" if self.max_retries is None else f" of {self.max_retries + 1}"
        return f"{self.attempt + 1}{of}"

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-ready: the fields ``ivy dead list --json`` prints; with ``full``, the
        arguments and the body (as text) as well."""
        data: dict[str, Any] = {
            "id": self.id, "queue": self.queue, "call_id": self.call_id, "name": self.name,
            "reason": self.reason, "time": self.time, "attempt": self.attempt,
            "args_preview": self.args_preview()}
        if full:
            data.update(args=self.args, kwargs=self.kwargs, reply_to=self.reply_to,
                        signed=self.signed, body=self.body.decode("utf-8", "backslashreplace"))
        return data


def _is_signed(body: bytes) -> bool:
    return body[:200].lstrip().startswith(b'{"ivy_signed"')


def _peek(body: bytes, serializer: Serializer) -> dict[str, Any] | None:
    """The body's fields, read without verifying anything (a signed body's inner bytes are
    read unchecked): for display and for the priority only."""
    try:
        data = serializer.loads(unwrap(body, None))
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def describe(letter: DeadLetter, serializer: Serializer) -> DeadLetterInfo:
    """Read what can be read from a dead letter's body."""
    data = _peek(letter.body, serializer) or {}

    def field(key: str, kind: type | tuple[type, ...]) -> Any:
        value = data.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return DeadLetterInfo(
        id=letter.id, queue=letter.queue, reason=letter.reason, time=letter.time,
        body=letter.body, call_id=field("id", str), name=field("name", str),
        args=field("args", list), kwargs=field("kwargs", dict), attempt=field("attempt", int),
        max_retries=field("max_retries", int), reply_to=field("reply_to", str),
        signed=_is_signed(letter.body))


def reset_attempt(body: bytes, serializer: Serializer,
                  signer: Signer | None) -> tuple[bytes, int | None]:
    """The body to requeue, and the priority it names: ``attempt`` set to 0 in a valid v1
    message (signed again when it was signed and verifies with ``signer``); any other body
    unchanged (see the module doc)."""
    data = _peek(body, serializer)
    priority = data.get("priority") if data is not None else None
    if not isinstance(priority, int) or isinstance(priority, bool):
        priority = None
    signed = _is_signed(body)
    if data is None or data.get("ivy") is None or not data.get("attempt") or (
            signed and signer is None):
        return body, priority
    try:
        message = decode_message(body, serializer, max_bytes=None, max_depth=None,
                                 signer=signer if signed else None)
    except MessageError:
        return body, priority
    message.attempt = 0
    new = message.encode(serializer)
    if signed and signer is not None:
        new = signer.sign(new)
    return new, priority


# -- the API (the methods of Ivy delegate here) ----------------------------------------------

def dead_letters(app: Ivy, queue: str, limit: int = 100) -> list[DeadLetterInfo]:
    """The ``limit`` most recent dead letters of ``queue``, oldest first."""
    return [describe(d, app.serializer) for d in app.queue_backend.dead_letters(queue, limit)]


def find(app: Ivy, queue: str, ident: str) -> list[DeadLetterInfo]:
    """The dead letters of ``queue`` whose id or call id is ``ident`` (a call dead-lettered
    twice has two), among the ``SEARCH_LIMIT`` most recent."""
    return [d for d in dead_letters(app, queue, SEARCH_LIMIT) if ident in (d.id, d.call_id)]


def resolve(letters: Iterable[DeadLetterInfo], ids: Iterable[str]) -> list[str]:
    """Dead-letter ids for ``ids``, each a dead letter's id or a call id, looked up in
    ``letters``; an id matching neither is kept as it is (an older dead letter's id still
    works with the backend)."""
    known: set[str] = set()
    by_call: dict[str, list[str]] = {}
    for d in letters:
        known.add(d.id)
        if d.call_id is not None:
            by_call.setdefault(d.call_id, []).append(d.id)
    out: list[str] = []
    for ident in ids:
        out.extend([ident] if ident in known else by_call.get(ident, [ident]))
    return list(dict.fromkeys(out))


def requeue_dead(app: Ivy, queue: str, ids: Collection[str] | None = None) -> int:
    """Put dead letters of ``queue`` back on it with their attempts reset: those named by
    ``ids`` (dead-letter ids or call ids, looked up among the ``SEARCH_LIMIT`` most recent),
    or all of them; return how many."""
    if ids is None:
        return _requeue_ids(app, queue, None)
    if not ids:
        return 0
    return _requeue_ids(app, queue, resolve(dead_letters(app, queue, SEARCH_LIMIT), ids))


def _requeue_ids(app: Ivy, queue: str, ids: list[str] | None) -> int:
    signer, serializer = app.signer, app.serializer
    return app.queue_backend.requeue_dead(
        queue, ids, rewrite=lambda body: reset_attempt(body, serializer, signer))


def purge_dead(app: Ivy, queue: str) -> int:
    """Delete every dead letter of ``queue``; return how many."""
    return app.queue_backend.purge_dead(queue)


# -- ivy dead ----------------------------------------------------------------------------

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
    import ivy
    from ivy.cli import existing_sqlite
    from ivy.config import QUEUE_ENV

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
    from ivy.config import QUEUE_ENV

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
    from ivy.config import NOTIFIER_ENV, make_notifier, mask_url
    from ivy.monitor import live_queues, workers_report

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
        count = _requeue_ids(app, args.queue, None)
        named: list[str] = []
    else:
        named = resolve(dead_letters(app, args.queue, SEARCH_LIMIT), args.ids)
        count = _requeue_ids(app, args.queue, named)
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


__all__ = ["DeadLetterInfo", "dead_letters", "describe", "find", "purge_dead", "requeue_dead",
           "reset_attempt", "resolve"]
