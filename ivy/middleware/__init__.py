"""Middleware: the one extension point of ivy. Metrics, tracing and events are middleware, and
users write their own the same way::

    class Audit(ivy.Middleware):
        def after_task(self, message, result, error):
            log.info("%s %s", message.name, "failed" if error else "ok")

    app = ivy.Ivy(middleware=[Audit()])      # or app.add_middleware(Audit())

Every hook does nothing by default. Hooks run in the order the middleware was added, on the
thread doing the work (the producer's thread for publishes, the executor's for tasks). A hook
that raises is logged and skipped: it never stops a publish or a task. ``message`` is an
:class:`ivy.Message`; ``error`` is the wire form of a failure (``{"type", "message",
"traceback"}``) or None. ``ivy.middleware.Prometheus`` and ``ivy.middleware.OpenTelemetry``
are imported on first use, so their libraries stay optional extras.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

from ivy.message import Message

log = logging.getLogger("ivy.middleware")

__all__ = ["Middleware", "Pipeline"]

#: name -> (module, class): the middleware shipped with ivy, imported on first use
_SHIPPED = {
    "Prometheus": ("ivy.middleware.prometheus", "Prometheus"),
    "OpenTelemetry": ("ivy.middleware.otel", "OpenTelemetry"),
    "Events": ("ivy.middleware.events", "Events"),
}


class Middleware:
    """Base class of middleware: override the hooks you need."""

    def before_publish(self, message: Message) -> None:
        """Producer: the call is checked and about to be encoded (headers may still change)."""

    def after_publish(self, message: Message) -> None:
        """Producer: the message was handed to the queue backend."""

    def before_task(self, message: Message) -> None:
        """Worker: the task is about to run."""

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        """Worker: the task ran; ``result`` is its value when ``error`` is None."""

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        """Worker: the task failed and runs again after ``delay`` seconds."""

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        """Worker: the message was dead-lettered; ``message`` is None when it was undecodable."""


class Pipeline:
    """An ordered list of middleware whose hooks are called safely, in order."""

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self.middleware: list[Middleware] = []
        for m in middleware:
            self.add(m)

    def add(self, middleware: Middleware) -> None:
        if not isinstance(middleware, Middleware):
            raise TypeError(f"{middleware!r} is not an ivy.Middleware: subclass "
                            "ivy.Middleware and override the hooks you need")
        self.middleware.append(middleware)

    def __bool__(self) -> bool:
        return bool(self.middleware)

    def _call(self, hook: str, *args: Any) -> None:
        for m in self.middleware:
            try:
                getattr(m, hook)(*args)
            except Exception:
                log.exception("middleware %s.%s raised; ignored", type(m).__name__, hook)

    def before_publish(self, message: Message) -> None:
        self._call("before_publish", message)

    def after_publish(self, message: Message) -> None:
        self._call("after_publish", message)

    def before_task(self, message: Message) -> None:
        self._call("before_task", message)

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        self._call("after_task", message, result, error)

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._call("on_retry", message, error, delay)

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        self._call("on_dead_letter", message, reason)


def __getattr__(name: str) -> Any:
    if name in _SHIPPED:
        module, attr = _SHIPPED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ivy.middleware' has no attribute {name!r}")
