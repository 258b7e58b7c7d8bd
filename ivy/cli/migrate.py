"""``ivy migrate``: create or upgrade the tables of a queue backend that keeps its own schema
(PostgreSQL), as a deployment step before workers start."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ivy.config import QUEUE_BACKENDS, QUEUE_ENV, make_queue_backend, mask_url, parse_spec
from ivy.errors import IvyError

#: the URL schemes of queue backends that keep a schema of their own
MIGRATED = ("postgresql", "postgres")


def add_parser(sub: Any, backends: Callable[..., None]) -> None:
    """Register ``ivy migrate`` on the CLI's subparsers; ``backends(parser, notifier=False)``
    adds the CLI's shared options (--queue-url, --log-level)."""
    p = sub.add_parser(
        "migrate", help="create or upgrade the tables of a PostgreSQL queue",
        description="Apply the migrations a postgresql:// queue's schema lacks (the schema "
                    "is the URL's ?schema=, default ivy), and record its version. Safe to run "
                    "from several processes at once; workers also do it on first use.")
    backends(p, notifier=False, log_level="WARNING")


def run(args: argparse.Namespace) -> int:
    """``ivy migrate``: 0 once the schema is at this ivy's version."""
    url = args.queue_url or os.environ.get(QUEUE_ENV)
    if not url:
        raise IvyError(f"ivy migrate needs the queue's URL: --queue-url URL or ${QUEUE_ENV}")
    if parse_spec(url, QUEUE_BACKENDS, "queue backend")["type"] not in MIGRATED:
        raise IvyError(f"the queue backend {mask_url(url)} keeps no schema to migrate: "
                       "ivy migrate is for postgresql:// queue URLs")
    backend = make_queue_backend(url)
    try:
        version, applied = backend.migrate()  # type: ignore[attr-defined]
        schema = getattr(getattr(backend, "settings", None), "schema", "?")
        if applied:
            print(f"schema {schema!r} of {backend.url}: migrated to version {version} "
                  f"(applied {', '.join(map(str, applied))})")
        else:
            print(f"schema {schema!r} of {backend.url}: already at version {version}")
        return 0
    finally:
        backend.close()
