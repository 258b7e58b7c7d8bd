"""Backend configuration: a URL or the original's dict form -> a queue backend or notifier, looked
up by scheme or ``type`` in a table and imported lazily."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ivy._urls import mask_url
from ivy.errors import ConfigurationError
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend

__all__ = ["DEFAULT_URL", "NOTIFIER_ENV", "QUEUE_ENV", "Spec", "make_notifier",
           "make_queue_backend", "mask_url", "parse_reserve_times", "parse_spec"]

DEFAULT_URL = "sqlite:///ivy.db"
QUEUE_ENV = "IVY_QUEUE_URL"
NOTIFIER_ENV = "IVY_NOTIFIER_URL"

#: scheme -> (module, class, pip extra or None)
QUEUE_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("ivy.queues.memory", "MemoryQueueBackend", None),
    "sqlite": ("ivy.queues.sqlite", "SQLiteQueueBackend", None),
    "amqp": ("ivy.queues.amqp", "AMQPQueueBackend", "amqp"),
    "amqps": ("ivy.queues.amqp", "AMQPQueueBackend", "amqp"),
    "sqs": ("ivy.queues.sqs", "SQSQueueBackend", "sqs"),
    "ironmq": ("ivy.queues.ironmq", "IronMQQueueBackend", "ironmq"),
    "redis": ("ivy.queues.redis_streams", "RedisStreamsQueueBackend", "redis"),
    "rediss": ("ivy.queues.redis_streams", "RedisStreamsQueueBackend", "redis"),
    "postgresql": ("ivy.queues.postgres", "PostgresQueueBackend", "postgres"),
    "postgres": ("ivy.queues.postgres", "PostgresQueueBackend", "postgres"),
}
NOTIFIERS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("ivy.notifiers.memory", "MemoryNotifier", None),
    "sqlite": ("ivy.notifiers.sqlite", "SQLiteNotifier", None),
    "redis": ("ivy.notifiers.redis", "RedisNotifier", "redis"),
    "rediss": ("ivy.notifiers.redis", "RedisNotifier", "redis"),
    "amqp": ("ivy.notifiers.amqp", "AMQPNotifier", "amqp"),
    "amqps": ("ivy.notifiers.amqp", "AMQPNotifier", "amqp"),
    "postgresql": ("ivy.notifiers.postgres", "PostgresNotifier", "postgres"),
    "postgres": ("ivy.notifiers.postgres", "PostgresNotifier", "postgres"),
}

Spec = str | Mapping[str, Any] | QueueBackend | Notifier | None


def _accepted(table: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}://" for name in table)


def parse_spec(spec: str | Mapping[str, Any], table: Mapping[str, Any], what: str
               ) -> dict[str, Any]:
    """Normalize a URL or dict into a dict with ``type`` plus backend options."""
    if isinstance(spec, Mapping):
        config = dict(spec)
        kind = config.get("type")
        if kind is None and isinstance(config.get("url"), str):
            kind = urlsplit(config["url"]).scheme
        if kind not in table:
            raise ConfigurationError(
                f"unknown {what} type {kind!r} in {_safe(config)}: accepted types are "
                f"{', '.join(table)} (e.g. {{'type': 'sqlite', 'path': 'ivy.db'}})")
        config["type"] = kind
        if isinstance(config.get("url"), str):
            config = {**_parse_url(config["url"], table, what), **config}
        return config
    if isinstance(spec, str):
        return _parse_url(spec, table, what)
    raise ConfigurationError(
        f"{what} must be a URL string or a dict with a 'type', got {type(spec).__name__} "
        f"{spec!r}: accepted schemes are {_accepted(table)} (e.g. {DEFAULT_URL})")


def _safe(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in ("auth", "password", "token") else v) for k, v in config.items()}


def _parse_url(url: str, table: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed {what} URL {mask_url(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise ConfigurationError(
            f"malformed {what} URL {mask_url(url)!r}: expected scheme://..., one of "
            f"{_accepted(table)} (e.g. {DEFAULT_URL})")
    if scheme not in table:
        raise ConfigurationError(
            f"unknown {what} URL scheme {scheme!r} in {mask_url(url)!r}: accepted schemes are "
            f"{_accepted(table)}")
    config: dict[str, Any] = {"type": scheme, "url": url}
    config.update(parse_qsl(parts.query))
    if scheme == "memory":
        config["name"] = parts.netloc or parts.path.strip("/") or "default"
    elif scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
            raise ConfigurationError(
                f"malformed SQLite URL {url!r}: use sqlite:///relative/ivy.db or "
                "sqlite:////absolute/path/ivy.db")
        config["path"] = unquote(parts.path[1:])
    return config


def _load(table: Mapping[str, tuple[str, str, str | None]], kind: str) -> Any:
    module_name, class_name, extra = table[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f": pip install 'ivy-queue[{extra}]'" if extra else ""
        raise ConfigurationError(f"the {kind} backend needs a package that is missing "
                                 f"({exc.name}){hint}") from exc
    return getattr(module, class_name)


def _make(spec: Spec, env: str, table: Mapping[str, tuple[str, str, str | None]],
          what: str) -> Any:
    """Build a ``what`` for a URL or dict (None: the environment variable ``env``, else the
    default); a backend object here is of the other role, and refused."""
    if spec is None:
        spec = os.environ.get(env) or DEFAULT_URL
    if isinstance(spec, (QueueBackend, Notifier)):
        other = "notifier" if isinstance(spec, Notifier) else "queue backend"
        raise ConfigurationError(f"{spec!r} is a {other}, not a {what}")
    config = parse_spec(spec, table, what)
    return _load(table, config["type"]).from_config(config)


def make_queue_backend(spec: Spec = None) -> QueueBackend:
    """Build the queue backend for a URL, dict or object (None: IVY_QUEUE_URL or the default)."""
    if isinstance(spec, QueueBackend):
        return spec
    backend: QueueBackend = _make(spec, QUEUE_ENV, QUEUE_BACKENDS, "queue backend")
    return backend


def make_notifier(spec: Spec = None) -> Notifier:
    """Build the notifier for a URL, dict or object (None: IVY_NOTIFIER_URL or the default)."""
    if isinstance(spec, Notifier):
        return spec
    notifier: Notifier = _make(spec, NOTIFIER_ENV, NOTIFIERS, "notifier")
    return notifier


def parse_reserve_times(messages: Any) -> dict[str, float]:
    """The original's listen option ``messages: {"pkg.task": {"reserveTime": 3600}}`` ->
    ``{"pkg.task": 3600.0}``; anything else is refused with what is accepted."""
    if messages is None:
        return {}
    if not isinstance(messages, Mapping):
        raise ConfigurationError(
            f"listen's 'messages' must map task names to options, such as "
            f"{{'pkg.task': {{'reserveTime': 3600}}}}, got {messages!r}")
    reserve_times: dict[str, float] = {}
    for name, options in messages.items():
        if not isinstance(options, Mapping) or not set(options) <= {
                "reserveTime", "reserve_time"}:
            raise ConfigurationError(
                f"listen's messages[{name!r}] = {options!r}: the one option per task is "
                "'reserveTime' (seconds), as in {'reserveTime': 3600}")
        values = set(options.values())
        value = next(iter(values)) if len(values) == 1 else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigurationError(
                f"listen's messages[{name!r}] reserveTime {options!r} must be one number "
                "of seconds > 0")
        reserve_times[name] = float(value)
    return reserve_times
