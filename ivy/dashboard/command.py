"""``ivy dashboard``: its command-line options (registered by ``ivy.cli``) and what it runs.
Starlette and uvicorn are imported only when the command runs (extra
``ivy-queue[dashboard]``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from typing import Any

from ivy.config import NOTIFIER_ENV, QUEUE_ENV
from ivy.errors import IvyError

TOKEN_ENV = "IVY_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a secret


def add_parser(sub: Any, port: Callable[[str], int]) -> None:
    """Register ``ivy dashboard`` on the CLI's subparsers (``port`` parses a port number)."""
    d = sub.add_parser(
        "dashboard", help="serve the web dashboard (needs ivy-queue[dashboard])",
        description="Serve a web dashboard: queues with their depth and dead letters, the "
                    "workers alive, tasks per second (from workers started with --events), "
                    "recent failures with tracebacks, and calls looked up by id. It binds "
                    "127.0.0.1 unless given a token.")
    d.add_argument("--queue-url", metavar="URL",
                   help=f"queue backend URL (default: ${QUEUE_ENV} or sqlite:///ivy.db)")
    d.add_argument("--notifier-url", metavar="URL",
                   help=f"notifier URL (default: ${NOTIFIER_ENV} or sqlite:///ivy.db)")
    d.add_argument("--queue", "-Q", action="append", metavar="NAME",
                   help="queue to show; repeat for several (default: those the backend knows "
                        "and those the live workers consume)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    d.add_argument("--port", type=port, default=8080, help="default 8080")
    d.add_argument("--token", metavar="TOKEN",
                   help=f"secret every request must show (default: ${TOKEN_ENV}; prefer the "
                        "variable: a command line is visible to other users)")
    d.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until SIGINT or SIGTERM."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        from .security import check_bind
        from .server import serve
        from .state import Dashboard
        from .web import create_app
    except ImportError as exc:
        raise IvyError(f"ivy dashboard needs Starlette, Jinja2 and uvicorn ({exc}): pip "
                       "install 'ivy-queue[dashboard]'") from None
    from ivy.app import Ivy
    from ivy.config import make_notifier, make_queue_backend

    check_bind(args.host, token)  # before connecting to anything
    with contextlib.ExitStack() as cleanup:
        backend = make_queue_backend(args.queue_url)
        cleanup.callback(backend.close)
        notifier = make_notifier(args.notifier_url)
        cleanup.callback(notifier.close)
        app = Ivy(backend, notifier)  # closes neither: they are handed in
        cleanup.callback(app.close)
        dashboard = Dashboard(app, notifier, args.queue or ())
        print(f"ivy dashboard: http://{_host(args.host)}:{args.port}/ (Ctrl-C to stop); "
              f"queues {backend.url}, notifier {notifier.url}", flush=True)
        serve(create_app(dashboard, token=token), args.host, args.port, token=token,
              log_level=args.log_level)
    return 0


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
