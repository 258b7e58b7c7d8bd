"""Middleware: every hook is called at its point, in order, on every backend; a hook that raises
never stops a publish or a task; headers travel with the message and survive a retry."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.message import Message


class Recorder(ivy.Middleware):
    def __init__(self, label: str, log: list[tuple[Any, ...]]) -> None:
        self.label = label
        self.log = log
        self.lock = threading.Lock()

    def _add(self, *entry: Any) -> None:
        with self.lock:
            self.log.append((self.label, *entry))

    def before_publish(self, message: Message) -> None:
        message.headers["x-audit"] = self.label
        self._add("before_publish", message.name)

    def after_publish(self, message: Message) -> None:
        self._add("after_publish", message.name)

    def before_task(self, message: Message) -> None:
        self._add("before_task", message.name, message.attempt, message.headers.get("x-audit"))

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        self._add("after_task", message.name, result, error and error["type"])

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._add("on_retry", message.name, error["type"])

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        self._add("on_dead_letter", message and message.name, reason)


class Broken(ivy.Middleware):
    def before_publish(self, message: Message) -> None:
        raise RuntimeError("broken before_publish")

    def before_task(self, message: Message) -> None:
        raise RuntimeError("broken before_task")

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        raise RuntimeError("broken after_task")


def test_hooks_run_in_order_and_a_raising_one_stops_nothing(urls: tuple[str, str]) -> None:
    log: list[tuple[Any, ...]] = []
    app = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.02,
                  middleware=[Broken(), Recorder("a", log)])
    app.add_middleware(Recorder("b", log))

    @app.register_task(name="t.double", queue="q")
    def double(n: int) -> int:
        return 2 * n

    @app.register_task(name="t.fails", queue="q", max_retries=1)
    def fails() -> None:
        raise ValueError("nope")

    try:
        app.listen(queue="q", block=False)
        # a task that succeeds: publish and task hooks, a then b, headers carried
        assert app.delayed_call(double, 4).result(20) == 8
        wait_for(lambda: ("b", "after_task", "t.double", 8, None) in log, message="after_task")
        assert [e for e in log if e[1] == "before_publish"] == [
            ("a", "before_publish", "t.double"), ("b", "before_publish", "t.double")]
        assert ("a", "after_publish", "t.double") in log
        assert ("a", "before_task", "t.double", 0, "b") in log  # b's header won (set last)
        # a task that fails once, is retried, then dead-lettered
        with pytest.raises(ivy.RemoteTaskError):
            app.delayed_call(fails).result(20)
        wait_for(lambda: any(e[:2] == ("b", "on_dead_letter") for e in log),
                 message="on_dead_letter")
        assert ("a", "on_retry", "t.fails", "ValueError") in log
        assert ("a", "before_task", "t.fails", 1, "b") in log  # headers survive the retry
        assert ("a", "after_task", "t.fails", None, "ValueError") in log
        # an undecodable message: on_dead_letter with no message
        app.queue_backend.publish("q", b"not json")
        wait_for(lambda: any(e[:3] == ("a", "on_dead_letter", None) for e in log),
                 message="on_dead_letter for bad bytes")
    finally:
        app.close()


def test_only_middleware_is_accepted() -> None:
    with pytest.raises(TypeError, match=r"not an ivy\.Middleware"):
        ivy.Ivy("memory://mw", "memory://mw", middleware=[object()])  # type: ignore[list-item]


def test_unknown_headers_are_kept_on_the_wire() -> None:
    from ivy.message import decode_message
    from ivy.serialization import get_serializer

    json = get_serializer("json")
    body = (b'{"ivy": 1, "id": "h", "name": "t.x", "args": [], '
            b'"headers": {"traceparent": "00-abc-def-01", "x-mine": "1"}}')
    message = decode_message(body, json)
    assert message.headers == {"traceparent": "00-abc-def-01", "x-mine": "1"}
    assert decode_message(message.encode(json), json).headers == message.headers
    with pytest.raises(ivy.MessageError, match="headers"):
        decode_message(b'{"ivy": 1, "id": "h", "name": "t.x", "args": [], "headers": {"a": 1}}',
                       json)


def test_worker_lifecycle_hooks_run_once_each_and_a_raising_one_stops_nothing(
        memory_url: str) -> None:
    # Given middleware that records the worker's start and stop, and one whose hooks raise
    class Lifecycle(ivy.Middleware):
        def __init__(self) -> None:
            self.seen: list[tuple[str, str]] = []

        def on_worker_start(self, worker: Any) -> None:
            self.seen.append(("start", worker.name))

        def on_worker_stop(self, worker: Any) -> None:
            self.seen.append(("stop", worker.name))

    class Broken(ivy.Middleware):
        def on_worker_start(self, worker: Any) -> None:
            raise RuntimeError("start hook")

        def on_worker_stop(self, worker: Any) -> None:
            raise RuntimeError("stop hook")

    lifecycle = Lifecycle()
    app = ivy.Ivy(memory_url, memory_url, middleware=[Broken(), lifecycle])

    @app.register_task(name="life.echo", queue="life")
    def echo(n: int) -> int:
        return n

    # When a worker starts, runs a call, and is stopped from two threads at once
    worker = app.listen(queue="life", block=False)
    assert lifecycle.seen == [("start", worker.name)]
    assert app.delayed_call(echo, 4).result(10) == 4
    stoppers = [threading.Thread(target=worker.stop, args=(10,)) for _ in range(2)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(20)
    # Then the stop hook ran once, after the start hook, and the raising hooks stopped nothing
    assert lifecycle.seen == [("start", worker.name), ("stop", worker.name)]
    app.close()
