"""Middleware: the one extension point of ivy, an ordered list of objects whose hooks (each a no-op
by default) run around publishes and tasks; metrics, tracing and events are middleware."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
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
        """Producer: the call is checked and about to be encoded (headers may still change).

        Args:
            message: the call's message; its ``headers`` may still change.
        """

    def after_publish(self, message: Message) -> None:
        """Producer: the message was handed to the queue backend.

        Args:
            message: the call's message.
        """

    def before_task(self, message: Message) -> None:
        """Worker: the task is about to run.

        Args:
            message: the call's message.
        """

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        """Worker: the task ran.

        Args:
            message: the call's message.
            result: the task's value when ``error`` is None.
            error: the error as it goes on the wire (``type``, ``message``, ``traceback``),
                or None when the task succeeded.
        """

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        """Worker: the task failed and runs again after ``delay`` seconds.

        Args:
            message: the call's message.
            error: the failure as it goes on the wire (``type``, ``message``, ``traceback``).
            delay: seconds before the next run.
        """

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        """Worker: the message was dead-lettered.

        Args:
            message: the call's message, or None when it was undecodable.
            reason: why it was dead-lettered.
        """

    def on_worker_start(self, worker: Any) -> None:
        """Worker: ``worker`` has started its threads: open what its tasks share.

        Called in the worker's own process (every child of ``ivy worker --processes N``).

        Args:
            worker: the :class:`ivy.Worker`.
        """

    def on_worker_stop(self, worker: Any) -> None:
        """Worker: ``worker`` has stopped (its in-flight tasks ended): close what
        ``on_worker_start`` opened.

        Args:
            worker: the :class:`ivy.Worker`.
        """


HOOKS = ("before_publish", "after_publish", "before_task", "after_task", "on_retry",
         "on_dead_letter", "on_worker_start", "on_worker_stop")


class Pipeline:
    """An ordered list of middleware whose hooks are called safely, in order. Each hook keeps
    the list of the middleware that override it, so a hook nobody overrides costs nothing."""

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self.middleware: list[Middleware] = []
        self._hooks: dict[str, list[Callable[..., None]]] = {hook: [] for hook in HOOKS}
        for m in middleware:
            self.add(m)

    def add(self, middleware: Middleware) -> None:
        if not isinstance(middleware, Middleware):
            raise TypeError(f"{middleware!r} is not an ivy.Middleware: subclass "
                            "ivy.Middleware and override the hooks you need")
        self.middleware.append(middleware)
        for hook, bound in self._hooks.items():
            if getattr(type(middleware), hook) is not getattr(Middleware, hook):
                bound.append(getattr(middleware, hook))

    def __bool__(self) -> bool:
        return bool(self.middleware)

    def _call(self, hook: str, *args: Any) -> None:
        for method in self._hooks[hook]:
            try:
                method(*args)
            except Exception:
                self._raised(method, hook)

    @staticmethod
    def _raised(method: Callable[..., None], hook: str) -> None:
        log.exception("middleware %s.%s raised; ignored",
                      type(getattr(method, "__self__", method)).__name__, hook)

    def before_publish(self, message: Message) -> None:
        self._call("before_publish", message)

    def after_publish(self, message: Message) -> None:
        self._call("after_publish", message)

    # the two hooks of every task run loop here themselves: one call less per run

    def before_task(self, message: Message) -> None:
        for method in self._hooks["before_task"]:
            try:
                method(message)
            except Exception:
                self._raised(method, "before_task")

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        for method in self._hooks["after_task"]:
            try:
                method(message, result, error)
            except Exception:
                self._raised(method, "after_task")

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._call("on_retry", message, error, delay)

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        self._call("on_dead_letter", message, reason)

    def on_worker_start(self, worker: Any) -> None:
        self._call("on_worker_start", worker)

    def on_worker_stop(self, worker: Any) -> None:
        self._call("on_worker_stop", worker)


def __getattr__(name: str) -> Any:
    if name in _SHIPPED:
        module, attr = _SHIPPED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ivy.middleware' has no attribute {name!r}")
