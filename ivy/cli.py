"""The command line: ``ivy worker``, ``ivy scheduler``, ``ivy call``, ``ivy cancel``,
``ivy inspect``, ``ivy events``, ``ivy dead`` and ``ivy dashboard`` (also ``python -m ivy``)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import importlib
import io
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import ivy
from ivy import deadletters
from ivy.config import DEFAULT_URL, NOTIFIER_ENV, QUEUE_ENV, make_notifier, mask_url
from ivy.dashboard import command as dashboard
from ivy.errors import IvyError, PublishError, PublishTimeout, RemoteTaskError, ResultTimeout
from ivy.monitor import (
    HEARTBEAT_INTERVAL,
    TTL_FACTOR,
    events_command,
    live_queues,
    worker_lines,
    workers_report,
)
from ivy.supervisor import EXIT_RECYCLE, ChildLink, Supervisor, child_command
from ivy.worker import Worker, signal_handlers

log = logging.getLogger("ivy.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivy", description="ivy task queue: run workers, send calls, inspect queues.")
    parser.add_argument("--version", action="version", version=f"ivy {ivy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def backends(p: argparse.ArgumentParser, notifier: bool = True,
                 log_level: str = "INFO") -> None:
        p.add_argument("--queue-url", metavar="URL",
                       help=f"queue backend URL (default: ${QUEUE_ENV} or sqlite:///ivy.db)")
        if notifier:
            p.add_argument("--notifier-url", metavar="URL",
                           help=f"notifier URL (default: ${NOTIFIER_ENV} or sqlite:///ivy.db)")
        p.add_argument("--log-level", default=log_level,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=f"default: {log_level}")

    w = sub.add_parser("worker", help="run a worker for the tasks of some modules",
                       description="Import MODULEs (which register tasks) and run their tasks "
                                   "until SIGTERM or SIGINT.")
    w.add_argument("modules", nargs="+", metavar="MODULE", help="module to import, e.g. tasks")
    w.add_argument("--queue", "-Q", action="append", metavar="NAME",
                   help="queue name to consume; repeat for several (default: the queues of "
                        "the registered tasks)")
    w.add_argument("--concurrency", "-c", type=_positive_int, default=1, metavar="N",
                   help="tasks run at once (threads; default 1)")
    w.add_argument("--reserve-time", type=float, default=30.0, metavar="SECONDS",
                   help="how long a fetched message stays reserved before it extends (default 30)")
    w.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="worker processes, each with --concurrency threads and its own "
                        "connections, restarted if they die (default 1: this process)")
    w.add_argument("--max-tasks-per-child", type=_positive_int, metavar="N",
                   help="replace a worker process once it processed N messages (it starts no "
                        "more and gives back those it fetched): for tasks that leak memory; "
                        "works with --processes 1 too")
    w.add_argument("--events", action="store_true",
                   help="publish task events through the notifier, for `ivy events`")
    w.add_argument("--no-dead-letter-failures", action="store_true",
                   help="do not dead-letter tasks that failed after their retries: store the "
                        "error and acknowledge them (the dead letters keep only messages that "
                        "could not run)")
    w.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL, metavar="SECONDS",
                   help="seconds between heartbeats, which `ivy inspect` shows; a killed "
                        f"worker drops out after {TTL_FACTOR} (default {HEARTBEAT_INTERVAL:g})")
    w.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (needs "
                        "ivy-queue[metrics]); with --processes, the parent serves them all")
    w.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address --metrics-port listens on (default 127.0.0.1; 0.0.0.0: all)")
    w.add_argument("--scheduler", action="store_true",
                   help="also run a scheduler for the periodic tasks of the MODULEs (in each "
                        "process of --processes); any number may run, each slot is sent once")
    w.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)  # set for children
    backends(w)

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
    deadletters.add_parser(sub, backends)
    dashboard.add_parser(sub, _port)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a whole number >= 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1 to 65535)")
    return value


def _import(modules: Sequence[str]) -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `ivy worker tasks` finds ./tasks.py, as python -m would
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise IvyError(f"cannot import module {name!r}: {exc}. Run from the folder that "
                           "holds it, or set PYTHONPATH") from exc


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
            return _worker(args, argv)
        if args.command == "scheduler":
            return _scheduler(args)
        if args.command == "cancel":
            return _cancel(args)
        if args.command == "call":
            return _call(args)
        if args.command == "dead":
            return deadletters.run(args)
        if args.command == "dashboard":
            return dashboard.run(args)
        if args.command == "events":
            notifier = make_notifier(args.notifier_url)
            try:
                return events_command(notifier, as_json=args.json)
            finally:
                notifier.close()
        return _inspect(args)
    except IvyError as exc:
        print(f"ivy: error: {exc}", file=sys.stderr)
        return 2
    except _backend_errors() as exc:  # a backend down, refusing, or misconfigured on its side
        if isinstance(exc, BrokenPipeError) or not _from_a_backend(exc):
            raise  # the reader of stdout gone (see main()), or a bug: its traceback helps
        log.debug("the command failed", exc_info=True)
        print(f"ivy: error: {_backend_failure(exc, args)}", file=sys.stderr)
        return 1


def _backend_errors() -> tuple[type[BaseException], ...]:
    """The errors of backends and their client libraries (those installed), which the
    command line reports in one line rather than as a traceback."""
    errors: list[type[BaseException]] = [OSError, sqlite3.Error]
    with contextlib.suppress(ImportError):
        import redis

        errors.append(redis.RedisError)
    with contextlib.suppress(ImportError):
        import pika.exceptions

        errors.append(pika.exceptions.AMQPError)
    return tuple(errors)


#: where a backend's errors come from: ivy's backends and the client libraries they use
_BACKEND_MODULES = ("ivy.queues.", "ivy.notifiers.", "ivy._sqlite", "ivy.backends",
                    "ivy.config", "ivy.outbox", "redis.", "pika.")


def _from_a_backend(exc: BaseException) -> bool:
    """Whether ``exc`` was raised through a backend's code (not, say, a task module's import:
    its own traceback says more than a line)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_BACKEND_MODULES):
            return True
        tb = tb.tb_next
    return False


def _backend_failure(exc: BaseException, args: argparse.Namespace) -> str:
    """What failed, and where: the masked URL of the ivy backend object whose method raised
    it (the innermost in the traceback), else the URLs the command was given (a SQLite one
    with its absolute path: an error of sqlite3 names none)."""
    what = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    found: str | None = None
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        url = getattr(owner, "url", None)
        if (str(frame.f_globals.get("__name__", "")).startswith("ivy.")
                and isinstance(url, str) and "://" in url):
            found = mask_url(url)  # keep walking: the innermost one is the one that failed
        tb = tb.tb_next
    if found is not None:
        return f"{what} ({found})"
    urls = [(name, value or os.environ.get(env) or DEFAULT_URL)
            for name, value, env in (("queue", getattr(args, "queue_url", None), QUEUE_ENV),
                                     ("notifier", getattr(args, "notifier_url", None),
                                      NOTIFIER_ENV))
            if hasattr(args, f"{name}_url")]
    where = "; ".join(f"{name} {_where(url)}" for name, url in urls)
    return f"{what} ({where})" if where else what


def _where(url: str) -> str:
    """A URL masked, and for SQLite the absolute path of its file."""
    if url.lower().startswith("sqlite:"):
        path = unquote(urlsplit(url).path[1:])
        if path and path != ":memory:":
            return f"{mask_url(url)} = {os.path.abspath(path)}"
    return mask_url(url)


def _worker(args: argparse.Namespace, argv: list[str]) -> int:
    if args.supervisor_fd is None and (args.processes > 1 or args.max_tasks_per_child):
        # The parent imports no task module: its children do (see ivy.supervisor).
        command = functools.partial(child_command, sys.executable, argv)
        if args.metrics_port is None:
            return Supervisor(command, args.processes).run()
        with _prometheus().MultiProcessMetrics(args.metrics_port, args.metrics_host) as metrics:
            return Supervisor(command, args.processes, env=metrics.env,
                              on_exit=metrics.process_exited).run()
    # A signal that arrives while the modules import still means "stop gracefully".
    early_stop = threading.Event()
    worker: Worker | None = None

    def stop_requested() -> None:  # by the supervisor, or because it is gone
        if worker is None:
            early_stop.set()
        else:  # not early_stop: a SIGTERM from the process group must not count as a second
            worker.stop()

    with signal_handlers(lambda signum, frame: early_stop.set()):
        if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack
            with contextlib.suppress(ValueError, OSError, io.UnsupportedOperation):
                faulthandler.register(signal.SIGUSR1, all_threads=True)
        link = None
        if args.supervisor_fd is not None:  # watch the parent from before the imports on
            link = ChildLink(args.supervisor_fd, stop_requested)
        _import(args.modules)
        app = ivy.default
        if not len(app.registry):
            raise IvyError(f"modules {', '.join(args.modules)} registered no task: decorate "
                           "functions with @ivy.register_task(...)")
        _worker_warnings(app, args)
        if args.no_dead_letter_failures:
            app.dead_letter_failures = False
        if args.queue_url:
            app.setup_queue(args.queue_url)
        app.start_notification_producer(args.notifier_url)
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(app.close)
            metrics = None
            if args.metrics_port is not None:  # served here, or by this child's supervisor
                metrics = cleanup.enter_context(_prometheus().worker_metrics(
                    app, args.metrics_port, args.metrics_host,
                    http=args.supervisor_fd is None))
            worker = _listen_once_reachable(app, args, early_stop)
            if worker is None:  # stopped before its queue backend answered
                return 0
            if metrics is not None:
                metrics.bind(worker.backend, worker.queues, registry=app.registry)
            if args.scheduler:
                cleanup.callback(_start_scheduler(app).stop)
            if link is not None:
                link.ready()
            worker.run_forever(early_stop)
    return EXIT_RECYCLE if worker is not None and worker.full else 0


#: Longest wait between two tries of a worker whose queue backend does not answer.
REACH_BACKOFF_MAX = 10.0


def _listen_once_reachable(app: ivy.Ivy, args: argparse.Namespace,
                           stop: threading.Event) -> Worker | None:
    """Start the worker; while its queue backend cannot be reached (refused, no route, name
    not resolved), log one line and try again, 1, 2, 4 ... up to ``REACH_BACKOFF_MAX`` s
    apart, as the RabbitMQ consumers do on their own: every backend behaves alike, and a
    worker started before its broker waits for it. None if ``stop`` (a signal) came first.
    Other failures (a queue that exists with other arguments, a bad Redis DB) raise."""
    delay = 1.0
    while True:
        try:
            return app.listen(queue=args.queue, concurrency=args.concurrency,
                              reserve_time=args.reserve_time, block=False,
                              max_messages=args.max_tasks_per_child, events=args.events,
                              heartbeat=args.heartbeat)
        except _backend_errors() as exc:
            if not _unreachable(exc):
                raise
            log.warning("worker: the queue backend cannot be reached: %s; trying again in "
                        "%.0f s (Ctrl-C to stop)", _backend_failure(exc, args), delay)
            log.debug("the connection failed", exc_info=True)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, REACH_BACKOFF_MAX)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says that a backend could not be reached (worth trying again), not
    that it refused what it was asked."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    with contextlib.suppress(ImportError):
        import redis

        kinds += [redis.ConnectionError, redis.TimeoutError]
    with contextlib.suppress(ImportError):
        import pika.exceptions

        kinds.append(pika.exceptions.AMQPConnectionError)
    return isinstance(exc, tuple(kinds))


def _worker_warnings(app: ivy.Ivy, args: argparse.Namespace) -> None:
    """Warn of a worker that nothing can reach: on a ``memory://`` queue (it lives in this
    process), or consuming a ``-Q`` queue that none of the modules' tasks use."""
    url = args.queue_url or os.environ.get(QUEUE_ENV) or DEFAULT_URL
    if url.lower().startswith("memory:"):
        log.warning("the queue %s lives in this worker's process: no other process can send "
                    "to it, so this worker will get no calls; give --queue-url a shared "
                    "backend (e.g. %s)", mask_url(url), DEFAULT_URL)
    used = {task.queue for task in map(app.registry.get, app.registry.names())
            if task is not None}
    unused = [q for q in args.queue or () if q not in used]
    if unused:
        log.warning("--queue %s: none of the tasks of %s use %s; their queues are %s",
                    ", ".join(unused), ", ".join(args.modules),
                    "it" if len(unused) == 1 else "them", ", ".join(sorted(used)))


def _start_scheduler(app: ivy.Ivy) -> Any:
    from ivy.timing.scheduler import Scheduler

    if not len(app.schedules):
        log.warning("--scheduler: the modules declare no periodic task; nothing to send")
    return Scheduler(app).start()


#: a call id as ivy makes them (ivy.message.new_id): 32 lowercase hex digits
CALL_ID = re.compile(r"[0-9a-f]{32}")


def _cancel(args: argparse.Namespace) -> int:
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


def _scheduler(args: argparse.Namespace) -> int:
    from ivy.timing.scheduler import Scheduler

    _import(args.modules)
    app = ivy.default
    if not len(app.schedules):
        raise IvyError(f"modules {', '.join(args.modules)} declare no periodic task: use "
                       "@ivy.periodic_task(every=...) or ivy.schedule(task, cron=...)")
    if args.queue_url:
        app.setup_queue(args.queue_url)
    app.start_notification_consumer(args.notifier_url)
    stop = threading.Event()
    try:
        with signal_handlers(lambda signum, frame: stop.set()):
            Scheduler(app).run(stop)
    finally:
        app.close()
    return 0


def _prometheus() -> Any:
    """ivy.middleware.prometheus, or a usage error naming the extra to install."""
    try:
        from ivy.middleware import prometheus
    except ImportError as exc:
        raise IvyError(f"--metrics-port needs prometheus-client ({exc}): pip install "
                       "'ivy-queue[metrics]'") from None
    return prometheus


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


def _call(args: argparse.Namespace) -> int:
    if args.log_level != "DEBUG":  # this command reports a message not taken in one line
        logging.getLogger("ivy.outbox").setLevel(logging.CRITICAL)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    _import(args.module)
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
        print(json.dumps(result))
        return 0
    finally:
        app.close()


def existing_sqlite(url: str | None, env: str, option: str) -> None:
    """Refuse (a usage error naming the path) a SQLite URL, or its default, whose file does
    not exist: a command that only reads must not leave an empty ``ivy.db`` where it ran."""
    url = url or os.environ.get(env) or DEFAULT_URL
    if not url.lower().startswith("sqlite:"):
        return
    path = unquote(urlsplit(url).path[1:])
    if path and path != ":memory:" and not os.path.exists(path):
        raise IvyError(f"no SQLite database at {os.path.abspath(path)} ({mask_url(url)}), "
                       f"and this command only reads one: give {option} URL (or ${env}) "
                       "naming the database your workers use")


def _inspect(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
