"""The command line, ``ivy ...`` (also ``python -m ivy``): one module per command group; what they
share is in :mod:`ivy.cli._common`."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence

import ivy
from ivy.cli import dead, migrate, queues, relay, schema
from ivy.cli._common import (
    backend_arguments,
    backend_errors,
    backend_failure,
    from_a_backend,
    port,
)
from ivy.cli.calls import call_command, cancel_command
from ivy.cli.inspect import events_command, inspect_command
from ivy.cli.worker import add_worker_arguments, scheduler_command, worker_command
from ivy.config import NOTIFIER_ENV, make_notifier
from ivy.dashboard import command as dashboard
from ivy.errors import IvyError

log = logging.getLogger("ivy.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivy", description="ivy task queue: run workers, send calls, inspect queues.")
    parser.add_argument("--version", action="version", version=f"ivy {ivy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    backends = backend_arguments

    w = sub.add_parser("worker", help="run a worker for the tasks of some modules",
                       description="Import MODULEs (which register tasks) and run their tasks "
                                   "until SIGTERM or SIGINT.")
    add_worker_arguments(w)

    can = sub.add_parser("cancel", help="cancel calls by id",
                         description="Cancel calls (queued ones never run, running ones are "
                                     "stopped) through the notifier their workers share.")
    can.add_argument("ids", nargs="+", metavar="CALL_ID", help="a call id, as `ivy call` prints")
    can.add_argument("--any-id", action="store_true",
                     help="accept ids that are not 32 hex digits (calls sent by producers of "
                          "other languages)")
    can.add_argument("--notifier-url", metavar="URL",
                     help=f"notifier URL (default: ${NOTIFIER_ENV} or sqlite:///ivy.db)")
    can.add_argument("--log-level", default="WARNING",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: WARNING")

    sch = sub.add_parser("scheduler", help="send the calls of periodic tasks",
                         description="Import MODULEs (which declare periodic tasks) and send "
                                     "their calls at each slot until SIGTERM or SIGINT. Run "
                                     "as many as you like: each slot is sent once.")
    sch.add_argument("modules", nargs="+", metavar="MODULE", help="module to import")
    backends(sch)

    c = sub.add_parser("call", help="send one call, optionally wait for its result",
                       description="Send a call of task NAME with JSON arguments.")
    c.add_argument("name", metavar="NAME", help="task name, e.g. testpackage.factorial")
    c.add_argument("args", nargs="*", metavar="JSON_ARG", help="positional argument, as JSON")
    c.add_argument("--kwargs", metavar="JSON", help="keyword arguments, a JSON object")
    c.add_argument("--queue", "-Q", metavar="NAME",
                   help="queue name (default: the task's if --module registers it, else ivy)")
    c.add_argument("--module", "-m", action="append", default=[], metavar="MODULE",
                   help="module to import first, to use its task registration")
    c.add_argument("--each", metavar="FILE", type=argparse.FileType("r"),
                   help="one call per line of FILE ('-': stdin), each a JSON array of "
                        "positional arguments; with --wait, a progress bar on stderr and one "
                        "JSON line per call on stdout")
    c.add_argument("--wait", action="store_true", help="wait for the result and print it")
    c.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the queue to take the message and, with --wait, "
                        "for the result (default 60)")
    backends(c, log_level="ERROR")

    i = sub.add_parser("inspect", help="show queue sizes, dead letters with their reasons, and "
                                       "the workers alive")
    i.add_argument("--queue", "-Q", action="append", metavar="NAME",
                   help="queue name (default: every queue the backend knows)")
    i.add_argument("--limit", type=int, default=20, metavar="N",
                   help="dead letters shown per queue (default 20)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    backends(i)

    e = sub.add_parser("events", help="print task events as workers publish them",
                       description="Print the task events of workers started with --events "
                                   "(received, started, succeeded, failed, retried, "
                                   "dead_lettered) as they come, until Ctrl-C.")
    e.add_argument("--json", action="store_true", help="one JSON object per line")
    e.add_argument("--notifier-url", metavar="URL",
                   help=f"notifier URL (default: ${NOTIFIER_ENV} or sqlite:///ivy.db)")
    e.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: INFO")
    dead.add_parser(sub, backends)
    queues.add_parser(sub, backends)
    migrate.add_parser(sub, backends)
    relay.add_parser(sub)
    schema.add_parser(sub)
    dashboard.add_parser(sub, port)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. A reader that goes away (``ivy dead list | head``)
    ends it quietly with status 0, Ctrl-C with one line and status 130, as a shell's
    commands do."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, where a reader gone is caught: not at interpreter exit
    except BrokenPipeError:
        # Python's recipe (docs of signal, "Note on SIGPIPE"): point stdout at devnull, so
        # that the flush at exit does not fail again
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("ivy: interrupted", file=sys.stderr)
        return 130
    return status


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # ivy logs one line per lost or refused connection, naming its URL and pika's error:
    # pika's own (up to 7 ERROR lines per retry) show at --log-level DEBUG only
    logging.getLogger("pika").setLevel(
        logging.DEBUG if args.log_level == "DEBUG" else logging.CRITICAL)
    try:
        if args.command == "worker":
            return worker_command(args, argv)
        if args.command == "scheduler":
            return scheduler_command(args)
        if args.command == "cancel":
            return cancel_command(args)
        if args.command == "call":
            return call_command(args)
        if args.command == "dead":
            return dead.run(args)
        if args.command == "queue":
            return queues.run(args)
        if args.command == "migrate":
            return migrate.run(args)
        if args.command == "relay":
            return relay.run(args)
        if args.command == "schema":
            return schema.run(args)
        if args.command == "dashboard":
            return dashboard.run(args)
        if args.command == "events":
            notifier = make_notifier(args.notifier_url)
            try:
                return events_command(notifier, as_json=args.json)
            finally:
                notifier.close()
        return inspect_command(args)
    except IvyError as exc:
        print(f"ivy: error: {exc}", file=sys.stderr)
        return 2
    except backend_errors() as exc:  # a backend down, refusing, or misconfigured on its side
        if isinstance(exc, BrokenPipeError) or not from_a_backend(exc):
            raise  # the reader of stdout gone (see main()), or a bug: its traceback helps
        log.debug("the command failed", exc_info=True)
        print(f"ivy: error: {backend_failure(exc, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
