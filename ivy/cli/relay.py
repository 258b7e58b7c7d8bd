"""``ivy relay``: move the committed messages of a PostgreSQL queue to another queue backend,
until SIGTERM or Ctrl-C (see :mod:`ivy.relay`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ivy._process import signal_handlers
from ivy.cli._common import positive_int
from ivy.config import QUEUE_ENV, make_queue_backend, mask_url
from ivy.errors import IvyError
from ivy.relay import DEFAULT_BATCH


def add_parser(sub: Any) -> None:
    """Register ``ivy relay`` on the CLI's subparsers."""
    p = sub.add_parser(
        "relay", help="move committed messages from a PostgreSQL queue to another backend",
        description="A transactional outbox: producers enqueue into PostgreSQL inside their "
                    "own transactions; the relay moves what they committed to the backend "
                    "the workers consume (with its confirms), then deletes it. At least "
                    "once, same call ids, in order per queue; several relays may run.")
    p.add_argument("--from", dest="source", metavar="URL",
                   help=f"the postgresql:// queue URL (default: ${QUEUE_ENV})")
    p.add_argument("--to", dest="target", metavar="URL", required=True,
                   help="the queue URL the workers consume (amqp://, sqs://, redis://, ...)")
    p.add_argument("--queue", dest="queues", action="append", metavar="Q",
                   help="a queue to relay (repeat for several; default: every queue found)")
    p.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH,
                   help=f"messages moved per queue and transaction (default: {DEFAULT_BATCH})")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")


def run(args: argparse.Namespace) -> int:
    """``ivy relay``: 0 once stopped by a signal."""
    from ivy.queues.postgres import PostgresQueueBackend
    from ivy.relay import Relay

    url = args.source or os.environ.get(QUEUE_ENV)
    if not url:
        raise IvyError(f"ivy relay needs the PostgreSQL queue: --from URL or ${QUEUE_ENV}")
    source = make_queue_backend(url)
    if not isinstance(source, PostgresQueueBackend):
        source.close()
        raise IvyError(f"ivy relay reads a PostgreSQL queue; {mask_url(url)} is not one "
                       "(--from postgresql://...)")
    try:
        target = make_queue_backend(args.target)
    except BaseException:
        source.close()
        raise
    relay = Relay(source, target, args.queues, batch=args.batch)
    named = ", ".join(map(repr, args.queues)) if args.queues else "every queue"
    print(f"ivy relay: moving {named} from {source.url} to {target.url}", flush=True)
    try:
        with signal_handlers(lambda signum, frame: relay.stop()):
            relay.run()
    finally:
        target.close()
        source.close()
    print(f"ivy relay: stopped after moving {relay.moved} message(s)", flush=True)
    return 0
