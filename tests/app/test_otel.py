"""OpenTelemetry middleware: one trace from the producer's publish span to the worker's process
span on every backend, spans the task opens are its children, failures are recorded, headers
(ours and unknown ones) survive retries, a context made up by another process is joined, and
nothing breaks without a tracer provider or when a publish or a task's end goes missing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.message import Message, new_id

pytest.importorskip("opentelemetry.sdk", reason="pip install 'ivy-queue[test]'")

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from ivy.middleware import otel


class Traced:
    """An app with the OpenTelemetry middleware on its own provider, and what it exported."""

    def __init__(self, urls: tuple[str, str], *before: ivy.Middleware) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")
        self.headers: list[tuple[str, int, dict[str, str]]] = []
        self.app = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05, middleware=[
            *before, ivy.middleware.OpenTelemetry(tracer_provider=self.provider),
            HeaderRecorder(self)])

    def spans(self, name: str | None = None, task: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans()
                if (name is None or s.name == name)
                and (task is None or (s.attributes or {}).get("ivy.task.name") == task)]

    def one(self, name: str, task: str | None = None) -> ReadableSpan:
        found = self.spans(name, task)
        assert len(found) == 1, [s.name for s in self.exporter.get_finished_spans()]
        return found[0]


class HeaderRecorder(ivy.Middleware):
    """Records the headers each task run sees (after the tracing middleware's before_task)."""

    def __init__(self, traced: Traced) -> None:
        self.traced = traced

    def before_task(self, message: Message) -> None:
        self.traced.headers.append((message.name, message.attempt, dict(message.headers)))


@pytest.fixture
def traced(urls: tuple[str, str]) -> Iterator[Traced]:
    instance = Traced(urls)
    yield instance
    instance.app.close()


def traceparent(span: ReadableSpan) -> str:
    assert span.context is not None
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def test_one_trace_from_the_producer_span_to_the_worker_span(traced: Traced) -> None:
    app = traced.app

    @app.register_task(name="t.add", queue="q")
    def add(a: int, b: int) -> int:
        return a + b

    app.listen(queue="q", block=False)
    # Given a request span current in the producer, when it calls a task
    with traced.tracer.start_as_current_span("request") as request:
        call = app.delayed_call(add, 1, 2)
    assert call.result(20) == 3
    wait_for(lambda: traced.spans("process q"), message="the process span")
    # Then one trace: request -> publish (PRODUCER) -> process (CONSUMER)
    publish, process = traced.one("publish q"), traced.one("process q")
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert publish.context is not None and process.context is not None
    assert publish.parent is not None and process.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == publish.context.span_id
    assert process.parent.is_remote  # extracted from the message, not inherited in-process
    assert {publish.context.trace_id, process.context.trace_id} == {
        request.get_span_context().trace_id}
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    # the W3C traceparent of the publish span travelled in the message's headers
    assert traced.headers == [("t.add", 0, {"traceparent": traceparent(publish)})]
    # and the semantic-convention attributes are there
    common = {"messaging.system": "ivy", "messaging.destination.name": "q",
              "messaging.message.id": call.id, "ivy.task.name": "t.add"}
    assert dict(publish.attributes or {}) == {
        **common, "messaging.operation.type": "send", "messaging.operation.name": "publish"}
    assert dict(process.attributes or {}) == {
        **common, "messaging.operation.type": "process", "messaging.operation.name": "process",
        "ivy.task.attempt": 0}
    assert publish.status.status_code is process.status.status_code is StatusCode.UNSET


def test_spans_the_task_opens_are_children_of_its_process_span(traced: Traced) -> None:
    app, tracer = traced.app, traced.tracer
    current: list[int] = []

    @app.register_task(name="t.sync", queue="q")
    def sync_task() -> str:
        current.append(trace.get_current_span().get_span_context().span_id)
        with tracer.start_as_current_span("inner t.sync"):
            return "ok"

    @app.register_task(name="t.async", queue="q")
    async def async_task() -> str:
        with tracer.start_as_current_span("inner t.async"):
            await asyncio.sleep(0)
            with tracer.start_as_current_span("inner t.async after await"):
                return "ok"

    @app.register_task(name="t.callback", queue="q")
    def callback_task(callback: Any) -> None:
        with tracer.start_as_current_span("inner t.callback"):
            callback(None, "ok")

    @app.register_task(name="t.outer", queue="q")
    def outer() -> str:
        app.delayed_call(sync_task)  # a call sent from a task joins the trace
        return "sent"

    app.listen(queue="q", block=False)
    for task in (sync_task, async_task, callback_task):
        assert app.delayed_call(task).result(20) == "ok"
    assert app.delayed_call(outer).result(20) == "sent"
    wait_for(lambda: len(traced.spans("process q", "t.sync")) == 2,
             message="the process span of the call sent from a task")

    def ids(spans: list[ReadableSpan]) -> list[int]:
        return sorted(s.context.span_id for s in spans if s.context)

    def parents(spans: list[ReadableSpan]) -> list[int]:
        return sorted(s.parent.span_id for s in spans if s.parent)

    for name in ("t.sync", "t.async", "t.callback"):
        # each run's own span is the current span in the task: what it opens is its child
        assert parents(traced.spans(f"inner {name}")) == ids(traced.spans("process q", name))
    assert sorted(current) == ids(traced.spans("process q", "t.sync"))
    assert parents([traced.one("inner t.async after await")]) == ids(
        [traced.one("inner t.async")])
    outer_process = traced.one("process q", "t.outer")
    # the call sent from a task: outer's process span -> publish -> that call's process span
    [nested_publish] = [s for s in traced.spans("publish q", "t.sync")
                        if s.parent and [s.parent.span_id] == ids([outer_process])]
    assert [s for s in traced.spans("process q", "t.sync")
            if s.parent and [s.parent.span_id] == ids([nested_publish])]


def test_concurrent_tasks_each_run_in_their_own_span(traced: Traced) -> None:
    app, tracer = traced.app, traced.tracer
    together = threading.Barrier(4, timeout=15)  # four tasks at once, or the test fails

    @app.register_task(name="t.square", queue="q")
    def square(n: int) -> int:
        together.wait()
        with tracer.start_as_current_span("inner t.square", attributes={"n": n}):
            return n * n

    app.listen(queue="q", block=False, concurrency=4)
    calls: dict[int, tuple[ivy.Call[Any], int]] = {}  # n -> (call, its request's trace id)
    for n in range(8):
        with tracer.start_as_current_span(f"request {n}") as request:
            calls[n] = (app.delayed_call(square, n), request.get_span_context().trace_id)
    assert [call.result(30) for call, _ in calls.values()] == [n * n for n in range(8)]
    wait_for(lambda: len(traced.spans("process q")) == 8, message="eight process spans")
    process_by_id = {(s.attributes or {})["messaging.message.id"]: s
                     for s in traced.spans("process q")}
    for inner in traced.spans("inner t.square"):
        call, trace_id = calls[int((inner.attributes or {})["n"])]  # type: ignore[arg-type]
        process = process_by_id[call.id]
        assert process.context is not None and inner.parent is not None
        assert process.context.trace_id == trace_id
        assert inner.parent.span_id == process.context.span_id


def test_a_context_set_by_an_earlier_middleware_is_kept(memory_url: str) -> None:
    made_up = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    class Custom(ivy.Middleware):
        def before_publish(self, message: Message) -> None:
            message.headers["traceparent"] = made_up

    traced = Traced((memory_url, memory_url), Custom())

    @traced.app.register_task(name="t.echo", queue="q")
    def echo(value: int) -> int:
        return value

    try:
        traced.app.listen(queue="q", block=False)
        assert traced.app.delayed_call(echo, 1).result(20) == 1
        wait_for(lambda: traced.spans("process q"), message="the process span")
        assert traced.headers == [("t.echo", 0, {"traceparent": made_up})]
        publish, process = traced.one("publish q"), traced.one("process q")
        assert [f"{link.context.span_id:016x}" for link in publish.links] == ["00f067aa0ba902b7"]
        assert process.parent is not None and f"{process.parent.span_id:016x}" == "00f067aa0ba902b7"
    finally:
        traced.app.close()


def test_a_failing_task_has_an_error_span_per_attempt(traced: Traced) -> None:
    app = traced.app

    @app.register_task(name="t.fails", queue="q", max_retries=1)
    def fails(n: int) -> None:
        raise ValueError(f"bad input {n}")

    app.listen(queue="q", block=False)
    with pytest.raises(ivy.RemoteTaskError, match="bad input 7"):
        app.delayed_call(fails, 7).result(20)
    wait_for(lambda: len(traced.spans("process q")) == 2, message="two process spans")
    publish = traced.one("publish q")
    processes = sorted(traced.spans("process q"),
                       key=lambda s: (s.attributes or {})["ivy.task.attempt"])
    assert [(s.attributes or {})["ivy.task.attempt"] for s in processes] == [0, 1]
    for span in processes:
        # each attempt: a child of the one publish span, failed, with the exception recorded
        assert span.parent is not None and publish.context is not None
        assert span.parent.span_id == publish.context.span_id
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "bad input 7"
        assert (span.attributes or {})["error.type"] == "ValueError"
        [event] = span.events
        assert event.name == "exception"
        attributes = dict(event.attributes or {})
        assert attributes["exception.type"] == "ValueError"
        assert attributes["exception.message"] == "bad input 7"
        assert "raise ValueError" in str(attributes["exception.stacktrace"])
    # the retry carried the same headers
    assert [(a, h) for _, a, h in traced.headers] == [
        (0, {"traceparent": traceparent(publish)}), (1, {"traceparent": traceparent(publish)})]


def test_a_context_from_another_process_is_joined_and_unknown_headers_survive_a_retry(
        traced: Traced) -> None:
    app = traced.app
    runs: list[int] = []

    @app.register_task(name="t.flaky", queue="q")
    def flaky() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return "ok"

    app.listen(queue="q", block=False)
    # Given a message from a producer in another process, with a context we make up here
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "vendor=abc",
               "x-unknown": "kept"}
    body = {"ivy": 1, "id": new_id(), "name": "t.flaky", "args": [], "queue": "q",
            "max_retries": 1, "headers": headers}
    app.queue_backend.publish("q", json.dumps(body).encode())
    wait_for(lambda: len(traced.spans("process q")) == 2, timeout=20, message="two attempts")
    # Then every attempt saw the headers unchanged, unknown ones included
    assert [(a, h) for _, a, h in traced.headers] == [(0, headers), (1, headers)]
    first, second = sorted(traced.spans("process q"),
                           key=lambda s: (s.attributes or {})["ivy.task.attempt"])
    for span in (first, second):
        # and the worker's spans belong to that trace, children of the made-up span
        assert span.context is not None and span.parent is not None
        assert f"{span.context.trace_id:032x}" == trace_id
        assert f"{span.parent.span_id:016x}" == span_id and span.parent.is_remote
        assert span.context.trace_state.get("vendor") == "abc"
        assert (span.attributes or {})["messaging.message.id"] == body["id"]
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    assert not traced.spans("publish q")  # that producer was not ours


def test_nothing_breaks_without_a_tracer_provider(urls: tuple[str, str]) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), (
        "a test set the global tracer provider; this one needs none configured")
    seen: list[dict[str, str]] = []

    class Seen(ivy.Middleware):
        def before_task(self, message: Message) -> None:
            seen.append(dict(message.headers))

    app = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05,
                  middleware=[ivy.middleware.OpenTelemetry(), Seen()])
    ran = threading.Event()

    @app.register_task(name="t.double", queue="q")
    def double(n: int) -> int:
        ran.set()
        return 2 * n

    @app.register_task(name="t.fails", queue="q")
    def fails() -> None:
        raise ValueError("no")

    try:
        app.listen(queue="q", block=False)
        assert app.delayed_call(double, 4).result(20) == 8
        with pytest.raises(ivy.RemoteTaskError):
            app.delayed_call(fails).result(20)
        assert seen[:2] == [{}, {}]  # no provider, no ambient context: nothing to propagate
        ran.clear()
        body = {"ivy": 1, "id": new_id(), "name": "t.double", "args": [1], "queue": "q",
                "headers": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                           "00f067aa0ba902b7-01"}}
        app.queue_backend.publish("q", json.dumps(body).encode())
        assert ran.wait(20)
    finally:
        app.close()


# -- the hooks themselves: threads, batches, missing after_* calls ----------------------------

def test_concurrent_publishers_and_batches_each_get_their_own_span(memory_url: str) -> None:
    traced = Traced((memory_url, memory_url))
    sent: dict[str, str] = {}  # message id -> traceparent it carried
    lock = threading.Lock()

    class Sent(ivy.Middleware):
        def after_publish(self, message: Message) -> None:
            with lock:
                sent[message.id] = message.headers["traceparent"]

    traced.app.add_middleware(Sent())
    roots: dict[int, int] = {}  # thread index -> span id of its request span

    @traced.app.register_task(name="t.remote", queue="unserved")
    def remote(n: int) -> int:
        return n

    def publisher(index: int) -> None:
        with traced.tracer.start_as_current_span(f"request {index}") as request:
            roots[index] = request.get_span_context().span_id
            for n in range(10):
                traced.app.delayed_call(remote, n)
            # a batch: its publish spans are siblings under the request, not nested
            traced.app.delayed_calls(remote, [[n] for n in range(5)])

    try:
        threads = [threading.Thread(target=publisher, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        publishes = traced.spans("publish unserved")
        assert len(publishes) == len(sent) == 6 * 15
        by_parent: dict[int, int] = {}
        for span in publishes:
            assert span.parent is not None and span.context is not None
            by_parent[span.parent.span_id] = by_parent.get(span.parent.span_id, 0) + 1
            message_id = (span.attributes or {})["messaging.message.id"]
            assert sent[str(message_id)] == traceparent(span)
        assert by_parent == {root: 15 for root in roots.values()}
        assert trace.get_current_span() is trace.INVALID_SPAN
    finally:
        traced.app.close()


def test_a_failed_publish_leaves_no_context_and_its_span_ends_as_an_error(
        memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otel, "PUBLISH_SPAN_TIMEOUT", 0.0)
    traced = Traced((memory_url, memory_url))

    @traced.app.register_task(name="t.echo", queue="unserved")
    def echo(value: Any) -> Any:
        return value

    try:
        with traced.tracer.start_as_current_span("request") as request:
            with pytest.raises(ivy.SerializationError):
                traced.app.delayed_call(echo, object())  # never handed over: no after_publish
            assert trace.get_current_span() is request
            assert not traced.spans("publish unserved")
            traced.app.delayed_call(echo, 1)
        failed, ok = traced.spans("publish unserved")
        assert failed.status.status_code is StatusCode.ERROR
        assert "publish failed" in str(failed.status.description)
        assert ok.status.status_code is StatusCode.UNSET
    finally:
        traced.app.close()


def test_a_missing_after_task_does_not_leak_the_context() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = ivy.middleware.OpenTelemetry(tracer_provider=provider)
    first = Message(id=new_id(), name="t.a", args=[], queue="q")
    second = Message(id=new_id(), name="t.b", args=[], queue="q")

    middleware.before_task(first)
    first_span = trace.get_current_span()
    assert first_span.get_span_context().is_valid
    # after_task of the first never comes; the next before_task on this thread cleans up
    middleware.before_task(second)
    [leftover] = exporter.get_finished_spans()
    assert leftover.context is not None
    assert leftover.context.span_id == first_span.get_span_context().span_id
    assert leftover.status.status_code is StatusCode.ERROR
    assert trace.get_current_span().get_span_context().span_id != leftover.context.span_id
    # a task that leaves its own context attached does not leak it either
    otel_context.attach(otel_context.set_value("left-by-the-task", True))
    middleware.after_task(second, None, None)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert otel_context.get_value("left-by-the-task") is None
    assert [s.status.status_code for s in exporter.get_finished_spans()] == [
        StatusCode.ERROR, StatusCode.UNSET]
    middleware.after_task(second, None, None)  # a second after_task does nothing
    assert len(exporter.get_finished_spans()) == 2


def test_import_ivy_needs_no_opentelemetry_and_a_missing_one_says_what_to_install() -> None:
    script = (
        "import sys, ivy\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    ivy.middleware.OpenTelemetry\n"
        "except ImportError as exc:\n"
        "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "needs the opentelemetry-api package: pip install 'ivy-queue[otel]'" in out
