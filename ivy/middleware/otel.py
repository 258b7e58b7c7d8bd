"""OpenTelemetry tracing (``pip install 'ivy-queue[otel]'``): one trace from the producer's call to
the worker's task, following the messaging semantic conventions (docs/internals/middleware.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        "ivy.middleware.OpenTelemetry needs the opentelemetry-api package: "
        "pip install 'ivy-queue[otel]'", name=exc.name) from exc

from ivy import __version__
from ivy.message import Message
from ivy.middleware import Middleware

log = logging.getLogger("ivy.middleware")

__all__ = ["OpenTelemetry", "PUBLISH_SPAN_TIMEOUT", "SYSTEM"]

#: ``messaging.system`` of every span
SYSTEM = "ivy"
#: Seconds after which a publish span whose ``after_publish`` never came (the publish failed)
#: is ended with status ERROR, on the next ``before_publish``.
PUBLISH_SPAN_TIMEOUT = 300.0


@dataclass(slots=True)
class _Processing:
    """The process span of the task running on one executor thread, and its attach token."""

    message_id: str
    span: trace.Span
    token: Any


class OpenTelemetry(Middleware):
    """Trace each call from ``publish`` (producer) to ``process`` (worker).

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace
    .set_tracer_provider``); with none configured every span is a no-op and calls run as
    without the middleware. Propagation uses the global propagators (``OTEL_PROPAGATORS``,
    ``opentelemetry.propagate.set_global_textmap``)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        """Get ivy's tracer from ``tracer_provider``.

        Args:
            tracer_provider: the OpenTelemetry tracer provider; None: the global one.
        """
        self.tracer = trace.get_tracer("ivy", __version__, tracer_provider=tracer_provider)
        self._lock = threading.Lock()
        #: message id -> (its publish span, monotonic start): spans awaiting after_publish
        self._publishing: OrderedDict[str, tuple[trace.Span, float]] = OrderedDict()
        self._local = threading.local()

    # -- producer ----------------------------------------------------------------------------

    def before_publish(self, message: Message) -> None:
        self._end_stale_publishes()
        queue = message.queue or ""
        custom = trace.get_current_span(propagate.extract(message.headers)).get_span_context()
        span = self.tracer.start_span(
            f"publish {queue}".rstrip(), kind=trace.SpanKind.PRODUCER,
            attributes=_attributes(message, "send", "publish"),
            links=[trace.Link(custom)] if custom.is_valid else None)
        if not custom.is_valid:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, trace.set_span_in_context(span))
            message.headers.update(
                (k, v) for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str))
        with self._lock:
            self._publishing[message.id] = (span, time.monotonic())

    def after_publish(self, message: Message) -> None:
        with self._lock:
            entry = self._publishing.pop(message.id, None)
        if entry is not None:
            entry[0].end()

    def _end_stale_publishes(self) -> None:
        """End the publish spans older than PUBLISH_SPAN_TIMEOUT: their publish failed."""
        limit = time.monotonic() - PUBLISH_SPAN_TIMEOUT
        stale: list[trace.Span] = []
        with self._lock:
            while self._publishing:
                message_id, (span, started) = next(iter(self._publishing.items()))
                if started > limit:
                    break
                del self._publishing[message_id]
                stale.append(span)
        for span in stale:
            span.set_status(trace.Status(
                trace.StatusCode.ERROR,
                f"not handed to the queue backend within {PUBLISH_SPAN_TIMEOUT:g} s "
                "(the publish failed)"))
            span.end()

    # -- worker ------------------------------------------------------------------------------

    def before_task(self, message: Message) -> None:
        self._end_leftover()
        parent = propagate.extract(message.headers)
        creation = trace.get_current_span(parent).get_span_context()
        attributes = _attributes(message, "process", "process")
        attributes["ivy.task.attempt"] = message.attempt
        span = self.tracer.start_span(
            f"process {message.queue or ''}".rstrip(), context=parent,
            kind=trace.SpanKind.CONSUMER, attributes=attributes,
            links=[trace.Link(creation)] if creation.is_valid else None)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._local.processing = _Processing(message.id, span, token)

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        processing: _Processing | None = getattr(self._local, "processing", None)
        if processing is None:
            return
        self._local.processing = None
        try:
            if processing.message_id != message.id:
                _leftover_status(processing.span)
            elif error is not None:
                _record_error(processing.span, error)
        finally:
            otel_context.detach(processing.token)
            processing.span.end()

    def _end_leftover(self) -> None:
        """End and detach the process span of this thread whose after_task never came."""
        processing: _Processing | None = getattr(self._local, "processing", None)
        if processing is None:
            return
        self._local.processing = None
        log.warning("OpenTelemetry: the process span of call %s had no after_task; ended",
                    processing.message_id)
        try:
            _leftover_status(processing.span)
        finally:
            otel_context.detach(processing.token)
            processing.span.end()


def _attributes(message: Message, operation_type: str, operation_name: str) -> dict[str, Any]:
    """The messaging semantic-convention attributes of a span about ``message``."""
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation_name,
        "messaging.message.id": message.id,
        "ivy.task.name": message.name,
    }
    if message.queue:
        attributes["messaging.destination.name"] = message.queue
    return attributes


def _record_error(span: trace.Span, error: dict[str, str]) -> None:
    """Mark ``span`` failed with the task's error in its wire form."""
    kind = error.get("type") or "Error"
    span.set_attribute("error.type", kind)
    span.add_event("exception", {
        "exception.type": kind,
        "exception.message": error.get("message", ""),
        "exception.stacktrace": error.get("traceback", ""),
    })
    span.set_status(trace.Status(trace.StatusCode.ERROR, error.get("message") or None))


def _leftover_status(span: trace.Span) -> None:
    span.set_status(trace.Status(trace.StatusCode.ERROR,
                                 "the task's end was not reported (no after_task)"))
