"""``ivy call`` and ``ivy cancel``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any

import ivy
from ivy.annotations import plain
from ivy.cli._common import import_modules
from ivy.config import DEFAULT_URL, NOTIFIER_ENV, QUEUE_ENV, mask_url
from ivy.errors import IvyError, PublishError, PublishTimeout, RemoteTaskError, ResultTimeout

log = logging.getLogger("ivy.cli")


#: a call id as ivy makes them (ivy.message.new_id): 32 lowercase hex digits
CALL_ID = re.compile(r"[0-9a-f]{32}")


def cancel_command(args: argparse.Namespace) -> int:
    if not args.any_id:
        bad = [i for i in args.ids if not CALL_ID.fullmatch(i)]
        if bad:
            raise IvyError(f"not a call id: {', '.join(map(repr, bad))}; a call id is 32 hex "
                           "digits, as `ivy call` prints (a producer of another language may "
                           "use others: then give --any-id)")
    app = ivy.default
    try:
        app.start_notification_consumer(args.notifier_url)
        for call_id in args.ids:
            try:
                app.cancel(call_id)
            except ValueError as exc:
                raise IvyError(str(exc)) from None
            print(f"cancelled {call_id}")
    finally:
        app.close()
    return 0


def _not_taken(error: PublishError, queue_url: str | None, call: ivy.Call[Any] | None) -> str:
    """One line: which message was not taken, by which queue (its URL masked), and why."""
    url = mask_url(queue_url or os.environ.get(QUEUE_ENV) or DEFAULT_URL)
    reason = str(error)
    if call is not None:
        try:
            call.sent(0)  # the call's own reason, rather than the flush's summary
        except PublishTimeout:
            pass  # still unconfirmed: the flush's timeout says so
        except PublishError as own:
            reason = str(own) if call.id in str(own) else (
                f"the message of call {call.id} of {call.task!r} was not taken: {own}")
    where = "" if url in reason else f" (queue {url})"
    return f"ivy: error: {reason}{where}"


def _unrouted(app: ivy.Ivy, args: argparse.Namespace) -> str:
    """The queue of a call whose task no --module registers and no --queue routes: refused
    (a usage error) when --module was given, else the default queue ``ivy``, with a warning.
    Either way a misrouted call is said at once, not after --timeout."""
    close = app.registry.close_names(args.name)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    if args.module:
        known = ", ".join(app.registry.names()) or "none"
        raise IvyError(f"task {args.name!r} is not registered by {', '.join(args.module)} "
                       f"(registered: {known}){hint} Name a registered task, or give --queue "
                       "NAME to send it anyway")
    print(f"ivy: warning: sending {args.name!r} to the default queue 'ivy': no --module "
          f"registers it here and no --queue names its queue{hint} (give -m MODULE to use "
          "the task's own queue, or --queue NAME)", file=sys.stderr)
    return "ivy"


def _liveness(app: ivy.Ivy, queue: str, args: argparse.Namespace) -> str:
    """What the live heartbeats say of ``queue`` on the app's queue URL: whether a worker
    consumes it, naming the queue URL and the notifier."""
    queue_url = app.queue_backend.url
    notifier_url = mask_url(args.notifier_url or os.environ.get(NOTIFIER_ENV) or DEFAULT_URL)
    try:
        workers = app.workers()
    except Exception as exc:  # e.g. a notifier that keeps no heartbeats
        return (f"whether a worker consumes queue {queue!r} on {queue_url} is unknown (no "
                f"heartbeats on notifier {notifier_url}: {exc})")
    consuming = [w for w in workers if queue in (w.get("queues") or [])
                 and w.get("queue_url", queue_url) == queue_url]
    if consuming:
        names = ", ".join(str(w.get("name", "?")) for w in consuming)
        return (f"{len(consuming)} live worker(s) consume queue {queue!r} on {queue_url} "
                f"({names}): they may be busy, or their results may go to another notifier "
                f"than {notifier_url}")
    return (f"no live worker consumes queue {queue!r} on {queue_url} (heartbeats on notifier "
            f"{notifier_url}: {len(workers)} worker(s) alive)")


def _no_result(error: ResultTimeout, app: ivy.Ivy, call: ivy.Call[Any],
               args: argparse.Namespace) -> str:
    """``ivy call --wait``'s timeout: the call's own message, its generic question replaced by
    what the live heartbeats say of the call's queue (:func:`_liveness`)."""
    message = str(error)
    fact = _liveness(app, call.queue, args)
    head, found, _ = message.partition("Is a worker listening")
    if not found:  # the call's message changed: add the facts rather than lose them
        return f"{message}; {fact}"
    return (f"{head}{fact}. The call may still complete: wait again, or raise --timeout")


def _json_argument(text: str) -> Any:
    """A JSON argument of ``ivy call``, read as strictly as a message is: no NaN or
    Infinity, no number too large for a float (1e999)."""
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def number(digits: str) -> float:
        value = float(digits)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"number {digits[:40]} is too large for a float")
        return value

    return json.loads(text, parse_constant=constant, parse_float=number)


def call_command(args: argparse.Namespace) -> int:
    if args.log_level != "DEBUG":  # this command reports a message not taken in one line
        logging.getLogger("ivy.outbox").setLevel(logging.CRITICAL)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    import_modules(args.module)
    app = ivy.default
    try:
        call_args = [_json_argument(a) for a in args.args]
        kwargs = _json_argument(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as exc:
        raise IvyError(f"an argument is not valid JSON ({exc}); quote strings as '\"text\"'"
                       ) from None
    except (ValueError, RecursionError) as exc:  # too many digits, too deep, inf
        raise IvyError(f"an argument is JSON that a call cannot carry: {exc}") from None
    if not isinstance(kwargs, dict):
        raise IvyError(f"--kwargs must be a JSON object, got {args.kwargs}")
    each = None
    if args.each is not None:
        if call_args:
            raise IvyError("give the arguments either as JSON_ARGs or as lines of --each "
                           "FILE, not both")
        from ivy.waiting import call_each, read_each

        with args.each:
            each = read_each(args.each)
    queue = args.queue or (None if app.registry.get(args.name) else _unrouted(app, args))
    if args.queue_url:
        app.setup_queue(args.queue_url)
    try:
        app.start_notification_consumer(args.notifier_url)
        call = None
        try:  # flushed before ids are printed: a script must not take a lost call for a sent one
            if each is not None:
                return call_each(app, args.name, each, kwargs=kwargs, queue=queue,
                                 wait_for_results=args.wait, timeout=args.timeout,
                                 out=sys.stdout, hint=lambda q: _liveness(app, q, args))
            call = app.send_task(args.name, call_args, kwargs, queue=queue)
            app.flush(args.timeout)
        except PublishError as exc:
            print(_not_taken(exc, args.queue_url, call), file=sys.stderr)
            return 1
        if not args.wait:
            print(call.id)
            return 0
        try:
            result = call.result(args.timeout)
        except RemoteTaskError as exc:
            print(f"{exc.type}: {exc.message}", file=sys.stderr)
            if exc.traceback:
                print(exc.traceback, file=sys.stderr)
            return 1
        except ResultTimeout as exc:
            print(f"ivy: {_no_result(exc, app, call, args)}", file=sys.stderr)
            return 3
        print(json.dumps(result, default=plain))  # a result decoded by its annotation
        return 0
    finally:
        app.close()
