"""``python manage.py ivy_worker [--queue Q ...] [--processes N ...]``: an ivy worker for the
Django tasks of a backend, with the options of ``ivy worker`` (but its MODULEs: a task is found
by its module path when a message names it)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import ivy
from ivy.cli._common import backend_errors, backend_failure, from_a_backend
from ivy.cli.worker import add_worker_arguments, worker_command
from ivy.contrib.django._compat import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from ivy.contrib.django.backend import IvyBackend, override_urls
from ivy.errors import IvyError


class Command(BaseCommand):
    """Run an ivy worker for the tasks of an ``IvyBackend`` of ``TASKS``."""

    help = ("Run an ivy worker for the Django tasks of an ivy backend (TASKS), until SIGTERM "
            "or SIGINT. The options are those of `ivy worker`.")
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        """``--backend ALIAS`` and every option of ``ivy worker``."""
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS, metavar="ALIAS",
                            help="the TASKS entry whose tasks run (default: default)")
        add_worker_arguments(parser, modules=False, queue_help=(
            "queue name to consume; repeat for several (default: the backend's QUEUES)"))

    def run_from_argv(self, argv: list[str]) -> None:
        """Keep the command line: the processes of ``--processes`` run it again."""
        self._argv = list(argv)
        super().run_from_argv(argv)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the worker; exit with its status when it is not 0."""
        parsed = argparse.Namespace(**options)
        logging.basicConfig(level=parsed.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("pika").setLevel(
            logging.DEBUG if parsed.log_level == "DEBUG" else logging.CRITICAL)
        try:
            status = worker_command(parsed, self._argv, setup=self._setup, child=self._child)
        except IvyError as exc:
            raise CommandError(str(exc), returncode=2) from None
        except backend_errors() as exc:
            if isinstance(exc, BrokenPipeError) or not from_a_backend(exc):
                raise
            raise CommandError(backend_failure(exc, parsed), returncode=1) from None
        if status:
            sys.exit(status)

    def _setup(self, args: argparse.Namespace) -> ivy.Ivy:
        """The backend's app, with the URLs given here, consuming its QUEUES by default."""
        override_urls(args.backend, args.queue_url, args.notifier_url)
        backend = task_backends[args.backend]
        if not isinstance(backend, IvyBackend):
            raise IvyError(f"TASKS[{args.backend!r}] is {type(backend).__module__}."
                           f"{type(backend).__qualname__}, not ivy.contrib.django.IvyBackend")
        if not args.queue:
            args.queue = sorted(backend.queues) or ["default"]
        return backend.app

    def _child(self, fd: int) -> list[str]:
        """The command line of a process of ``--processes``: this one, with its end of the
        supervisor's channel."""
        if not self._argv:
            raise IvyError("--processes and --max-tasks-per-child start the command again: run "
                           "it from the command line (manage.py), not through call_command")
        argv = self._argv
        at = argv.index("ivy_worker") + 1 if "ivy_worker" in argv else len(argv)
        return [sys.executable, *argv[:at], "--supervisor-fd", str(fd), *argv[at:]]
