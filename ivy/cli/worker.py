"""``ivy worker`` and ``ivy scheduler``: the long-running commands."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import io
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import ivy
from ivy._process import signal_handlers
from ivy.cli._common import (
    backend_arguments,
    backend_errors,
    backend_failure,
    import_modules,
    megabytes,
    port,
    positive_int,
    prometheus,
    seconds,
)
from ivy.config import DEFAULT_URL, QUEUE_ENV, mask_url
from ivy.errors import IvyError
from ivy.worker import Worker, limits
from ivy.worker.monitor import HEARTBEAT_INTERVAL, TTL_FACTOR
from ivy.worker.supervisor import (
    EXIT_RECYCLE,
    EXIT_TIME_LIMIT,
    ChildLink,
    Supervisor,
    child_command,
)

log = logging.getLogger("ivy.cli")


def add_worker_arguments(w: argparse.ArgumentParser, *, modules: bool = True,
                         queue_help: str | None = None) -> None:
    """The options of ``ivy worker`` (and of ``python manage.py ivy_worker``, which takes
    them all but the MODULEs: ``modules=False``)."""
    queue_help = queue_help or ("queue name to consume; repeat for several (default: the "
                                "queues of the registered tasks)")
    if modules:
        w.add_argument("modules", nargs="+", metavar="MODULE",
                       help="module to import, e.g. tasks")
    w.add_argument("--queue", "-Q", action="append", metavar="NAME", help=queue_help)
    w.add_argument("--concurrency", "-c", type=positive_int, default=1, metavar="N",
                   help="tasks run at once (threads; default 1)")
    w.add_argument("--reserve-time", type=float, default=30.0, metavar="SECONDS",
                   help="how long a fetched message stays reserved before it extends (default 30)")
    w.add_argument("--processes", type=positive_int, default=1, metavar="N",
                   help="worker processes, each with --concurrency threads and its own "
                        "connections, restarted if they die (default 1: this process)")
    w.add_argument("--max-tasks-per-child", type=positive_int, metavar="N",
                   help="replace a worker process once it processed N messages (it starts no "
                        "more and gives back those it fetched): for tasks that leak memory; "
                        "works with --processes 1 too")
    w.add_argument("--max-memory-per-child", type=megabytes, metavar="MB",
                   help="replace a worker process once its resident memory passes MB (looked "
                        "at after each task and every second; it finishes what runs, gives "
                        "back what it fetched): for leaks; works with --processes 1 too")
    w.add_argument("--time-limit", type=seconds, metavar="SECONDS",
                   help="hard time limit of the tasks without their own time_limit: the "
                        "worker runs under a supervisor, and a call past it fails with "
                        "TaskTimeout (or is retried by its policy) as its worker process is "
                        "replaced")
    w.add_argument("--events", action="store_true",
                   help="publish task events through the notifier, for `ivy events`")
    w.add_argument("--shutdown-timeout", type=seconds, metavar="SECONDS",
                   help="at SIGTERM, wait this long for running calls, then hand them back to "
                        "their queue at once and exit (default: wait for them)")
    w.add_argument("--burst", action="store_true",
                   help="stop, exit status 0, once the queues have had nothing due for a "
                        "second and nothing is running: for cron jobs and CI (not with "
                        "--processes)")
    w.add_argument("--no-dead-letter-failures", action="store_true",
                   help="do not dead-letter tasks that failed after their retries: store the "
                        "error and acknowledge them (the dead letters keep only messages that "
                        "could not run)")
    w.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL, metavar="SECONDS",
                   help="seconds between heartbeats, which `ivy inspect` shows; a killed "
                        f"worker drops out after {TTL_FACTOR} (default {HEARTBEAT_INTERVAL:g})")
    w.add_argument("--metrics-port", type=port, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (needs "
                        "ivy-queue[metrics]); with --processes, the parent serves them all")
    w.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address --metrics-port listens on (default 127.0.0.1; 0.0.0.0: all)")
    w.add_argument("--scheduler", action="store_true",
                   help="also run a scheduler for the periodic tasks of the MODULEs (in each "
                        "process of --processes); any number may run, each slot is sent once")
    w.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)  # set for children
    w.add_argument("--limits-fd", type=int, help=argparse.SUPPRESS)  # ivy.worker.limits
    backend_arguments(w)


def worker_command(args: argparse.Namespace, argv: list[str], *,
                   setup: Callable[[argparse.Namespace], ivy.Ivy] | None = None,
                   child: Callable[[int], list[str]] | None = None) -> int:
    """Run ``ivy worker``: ``setup(args)`` gives the app whose tasks run (default: import the
    MODULEs and use ``ivy.default``); with ``--processes``, ``child(fd)`` is the command line
    of a child process (default: ``python -m ivy`` with ``argv``)."""
    recycled = args.max_tasks_per_child or args.max_memory_per_child
    if args.burst and (args.processes > 1 or recycled):
        raise IvyError("--burst runs one worker process until its queues have nothing due: "
                       "drop --processes, --max-tasks-per-child and --max-memory-per-child, "
                       "or run several --burst workers side by side")
    if args.supervisor_fd is None and not args.burst and (
            args.processes > 1 or recycled or args.time_limit is not None):
        # The parent imports no task module: its children do (see ivy.worker.supervisor).
        return _supervise(args, argv, child)
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
        app = (setup or _modules_app)(args)
        limited = _declares_time_limits(app, args.queue)
        if link is None and not args.burst and limited and _restartable(child):
            log.info("worker: %s %s a hard time limit: the worker runs in a process of its "
                     "own under a supervisor, which replaces it when a call passes its limit",
                     ", ".join(limited), "has" if len(limited) == 1 else "have")
            return _supervise(args, argv, child)
        if args.limits_fd is not None:  # this process's supervisor watches its time limits
            limits.install(limits.Board(args.limits_fd, args.concurrency))
        if args.no_dead_letter_failures:
            app.dead_letter_failures = False
        if args.queue_url:
            app.setup_queue(args.queue_url)
        app.start_notification_producer(args.notifier_url)
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(app.close)
            metrics = None
            if args.metrics_port is not None:  # served here, or by this child's supervisor
                metrics = cleanup.enter_context(prometheus().worker_metrics(
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
            worker.run_forever(early_stop, burst=args.burst,
                               shutdown_timeout=args.shutdown_timeout)
    if worker is not None and worker.limit_passed:
        return EXIT_TIME_LIMIT
    return EXIT_RECYCLE if worker is not None and worker.full else 0


def _supervise(args: argparse.Namespace, argv: list[str],
               child: Callable[[int], list[str]] | None) -> int:
    """Run ``args.processes`` worker processes under a supervisor (ivy.worker.supervisor),
    each watched for the hard time limits of its calls (ivy.worker.limits)."""
    command = child or functools.partial(child_command, sys.executable, argv)
    if args.metrics_port is None:
        return Supervisor(command, args.processes, limit_slots=args.concurrency).run()
    with prometheus().MultiProcessMetrics(args.metrics_port, args.metrics_host) as metrics:
        return Supervisor(command, args.processes, env=metrics.env,
                          on_exit=metrics.process_exited, limit_slots=args.concurrency).run()


def _restartable(child: Callable[[int], list[str]] | None) -> bool:
    """Whether this command can start itself again as a supervised child (not when run by
    ``call_command`` in Django: then time-limited calls run in runner processes)."""
    if child is None:
        return True
    try:
        child(0)  # only builds the command line
    except IvyError:
        return False
    return True


def _declares_time_limits(app: ivy.Ivy, queues: list[str] | None) -> list[str]:
    """The names of the app's tasks on ``queues`` (None: all) with a ``time_limit`` of their
    own."""
    return [task.name for task in app.registry.tasks()
            if task.time_limit and (queues is None or task.queue in queues)]


def _modules_app(args: argparse.Namespace) -> ivy.Ivy:
    """``ivy worker MODULE ...``: import the modules; the default app, with their tasks."""
    import_modules(args.modules)
    app = ivy.default
    if not len(app.registry):
        raise IvyError(f"modules {', '.join(args.modules)} registered no task: decorate "
                       "functions with @ivy.register_task(...)")
    _worker_warnings(app, args)
    return app


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
                              heartbeat=args.heartbeat, max_memory=args.max_memory_per_child,
                              time_limit=args.time_limit)
        except backend_errors() as exc:
            if not _unreachable(exc):
                raise
            log.warning("worker: the queue backend cannot be reached: %s; trying again in "
                        "%.0f s (Ctrl-C to stop)", backend_failure(exc, args), delay)
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
    used = {task.queue for task in app.registry.tasks()}
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


def scheduler_command(args: argparse.Namespace) -> int:
    from ivy.timing.scheduler import Scheduler

    import_modules(args.modules)
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
