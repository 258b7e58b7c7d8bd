"""What the commands share: argument types, module imports, and one-line reports of a
backend's failure."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from ivy.config import DEFAULT_URL, NOTIFIER_ENV, QUEUE_ENV, mask_url
from ivy.errors import IvyError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a whole number >= 1")
    return value


def _positive(text: str, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit} > 0")
    return value


def megabytes(text: str) -> float:
    """A number of MB > 0, finite (an argument type)."""
    return _positive(text, "MB")


def seconds(text: str) -> float:
    """A number of seconds > 0, finite (an argument type)."""
    return _positive(text, "seconds")


def backend_arguments(p: argparse.ArgumentParser, notifier: bool = True,
                      log_level: str = "INFO") -> None:
    """``--queue-url``, ``--notifier-url`` (unless ``notifier`` is false) and
    ``--log-level``: what the commands that reach backends take."""
    p.add_argument("--queue-url", metavar="URL",
                   help=f"queue backend URL (default: ${QUEUE_ENV} or sqlite:///ivy.db)")
    if notifier:
        p.add_argument("--notifier-url", metavar="URL",
                       help=f"notifier URL (default: ${NOTIFIER_ENV} or sqlite:///ivy.db)")
    p.add_argument("--log-level", default=log_level,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=f"default: {log_level}")


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1 to 65535)")
    return value


def import_modules(modules: Sequence[str]) -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `ivy worker tasks` finds ./tasks.py, as python -m would
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise IvyError(f"cannot import module {name!r}: {exc}. Run from the folder that "
                           "holds it, or set PYTHONPATH") from exc


def backend_errors() -> tuple[type[BaseException], ...]:
    """The errors of backends and their client libraries (those installed), which the
    command line reports in one line rather than as a traceback."""
    import sqlite3  # here: a worker on another backend need not load it (~1 MB)

    errors: list[type[BaseException]] = [OSError, sqlite3.Error]
    with contextlib.suppress(ImportError):
        import redis

        errors.append(redis.RedisError)
    with contextlib.suppress(ImportError):
        import pika.exceptions

        errors.append(pika.exceptions.AMQPError)
    return tuple(errors)


#: where a backend's errors come from: ivy's backends and the client libraries they use
BACKEND_MODULES = ("ivy.queues.", "ivy.notifiers.", "ivy._sqlite", "ivy._amqp.", "ivy.app.backends",
                    "ivy.config", "ivy.outbox", "redis.", "pika.")


def from_a_backend(exc: BaseException) -> bool:
    """Whether ``exc`` was raised through a backend's code (not, say, a task module's import:
    its own traceback says more than a line)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(BACKEND_MODULES):
            return True
        tb = tb.tb_next
    return False


def backend_failure(exc: BaseException, args: argparse.Namespace) -> str:
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


def prometheus() -> Any:
    """ivy.middleware.prometheus, or a usage error naming the extra to install."""
    try:
        from ivy.middleware import prometheus
    except ImportError as exc:
        raise IvyError(f"--metrics-port needs prometheus-client ({exc}): pip install "
                       "'ivy-queue[metrics]'") from None
    return prometheus
