"""The running call's context and progress (issue 26, part 5): ``ivy.current()`` inside a task,
``progress`` notifications on every notifier, ``call.progress`` and ``call.on_progress``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.context import PROGRESS_PER_SECOND, CallContext, Progress
from ivy.message import Notification, decode_notification
from ivy.serialization import JSONSerializer


def qname() -> str:
    return f"ivy-progress-{uuid.uuid4().hex[:10]}"


def test_progress_reaches_the_producer_on_every_pairing(app: ivy.Ivy) -> None:
    # Given a task that reports a quarter done, then waits until the test saw it
    queue = qname()
    seen_by_task: list[CallContext] = []
    go_on = threading.Event()

    @app.register_task(name="t.progress", queue=queue)
    def work(n: int) -> int:
        context = ivy.current()
        seen_by_task.append(context)
        context.progress(0.25, "a quarter")
        assert go_on.wait(20)
        context.progress(1.0, "done")
        return n * 2

    app.listen(queue=queue, block=False)
    call = app.delayed_call(work, 21)
    updates: list[Progress] = []
    call.on_progress(updates.append)
    # When it runs: the producer gets the update while the task still runs
    wait_for(lambda: call.progress is not None, timeout=20, message="the first progress")
    assert call.progress == Progress(0.25, "a quarter")
    assert call.status == "running" and not call.done()
    go_on.set()
    # Then the result follows, and the callback got the update(s)
    assert call.result(20) == 42
    wait_for(lambda: Progress(0.25, "a quarter") in updates, message="the progress callback")
    # and the context named the call
    (context,) = seen_by_task
    assert (context.call_id, context.task, context.queue, context.attempt) == (
        call.id, "t.progress", queue, 0)
    assert context.worker


@pytest.mark.parametrize("style", ["async", "callback"])
def test_current_works_in_async_and_callback_tasks(style: str) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        seen: list[tuple[str, int]] = []
        if style == "async":
            @app.register_task(name="t.styled", queue="q")
            async def styled(n: int) -> int:
                await asyncio.sleep(0)
                context = ivy.current()
                seen.append((context.call_id, context.attempt))
                context.progress(1.0, "async")
                return n
        else:
            @app.register_task(name="t.styled", queue="q")
            def styled(n: int, callback: Any) -> None:  # type: ignore[misc]
                context = ivy.current()
                seen.append((context.call_id, context.attempt))
                context.progress(1.0, "callback")
                callback(None, n)

        app.listen(queue="q", block=False)
        call = app.send_task("t.styled", [5], queue="q")
        assert call.result(10) == 5
        assert seen == [(call.id, 0)]
        wait_for(lambda: call.progress is not None, message="the progress")
        assert call.progress == Progress(1.0, style)
    finally:
        app.close()


def test_attempt_counts_retries() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url, retry_base_delay=0.01, retry_max_delay=0.02)
    try:
        attempts: list[int] = []

        @app.register_task(name="t.flaky", queue="q", max_retries=2)
        def flaky() -> int:
            attempts.append(ivy.current().attempt)
            if len(attempts) < 3:
                raise OSError("not yet")
            return len(attempts)

        app.listen(queue="q", block=False)
        assert app.delayed_call(flaky).result(10) == 3
        assert attempts == [0, 1, 2]
    finally:
        app.close()


def test_current_outside_a_task_says_where_it_works() -> None:
    with pytest.raises(RuntimeError, match="only set while a worker runs a task"):
        ivy.current()


def test_bad_progress_arguments_fail_the_task_with_the_value_named() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        @app.register_task(name="t.bad", queue="q")
        def bad(fraction: Any) -> None:
            ivy.current().progress(fraction)

        app.listen(queue="q", block=False)
        for value in (1.5, -0.1, "half", True):
            with pytest.raises(ivy.RemoteTaskError, match="must be a number from 0 to 1"):
                app.delayed_call(bad, value).result(10)
    finally:
        app.close()


def test_progress_is_rate_limited_and_the_last_one_kept() -> None:
    # Given a task that reports progress in a tight loop for ~0.5 s
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        spent: list[float] = []

        @app.register_task(name="t.chatty", queue="q")
        def chatty() -> None:
            context = ivy.current()
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < 0.5:
                context.progress(min(i / 100_000, 0.99))
                i += 1
            context.progress(1.0, "finished")
            spent.append(time.monotonic() - start)

        app.listen(queue="q", block=False)
        call = app.delayed_call(chatty)
        updates: list[Progress] = []
        call.on_progress(updates.append)
        call.result(10)
        wait_for(lambda: Progress(1.0, "finished") in updates, message="the last update")
        # Then at most 10 per second got through (plus the first and the final 1.0)
        assert len(updates) <= spent[0] * PROGRESS_PER_SECOND + 2
        assert len(updates) >= 2
    finally:
        app.close()


def test_a_raising_progress_callback_stops_nothing() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        @app.register_task(name="t.reports", queue="q")
        def reports() -> str:
            ivy.current().progress(1.0)
            return "ok"

        app.listen(queue="q", block=False)
        call = app.delayed_call(reports)

        def boom(update: Progress) -> None:
            raise RuntimeError("a bad callback")

        call.on_progress(boom)
        assert call.result(10) == "ok"
        # and the next call is delivered as well
        assert app.delayed_call(reports).result(10) == "ok"
    finally:
        app.close()


def test_a_failing_sink_never_fails_the_task(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[Progress] = []

    def broken(update: Progress) -> None:
        sent.append(update)
        raise ConnectionError("notifier down")

    context = CallContext("c1", "t", "q", 0, "w", broken)
    with caplog.at_level(logging.WARNING, logger="ivy"):
        context.progress(0.5, "x" * 5000)
        context.progress(1.0)
    assert [u.fraction for u in sent] == [0.5, 1.0]
    assert sent[0].note == "x" * 1000  # cut to MAX_NOTE_CHARS
    assert sum("sending its progress failed" in r.getMessage() for r in caplog.records) == 1


def test_progress_notifications_are_checked_by_the_schema() -> None:
    json = JSONSerializer()
    good = Notification("c", "progress", "t", progress={"fraction": 0.5, "note": None})
    assert decode_notification(good.encode(json), json).progress == {"fraction": 0.5,
                                                                      "note": None}
    for bad in ({"fraction": 2}, {"note": "no fraction"}, {"fraction": 0.1, "note": 3}):
        body = Notification("c", "progress", "t", progress=bad).encode(json)
        with pytest.raises(ivy.MessageError):
            decode_notification(body, json)


def test_progress_with_another_calls_nonce_is_ignored() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        call = app.send_task("t.none", [], queue="nobody")
        (consumer,) = app.producer.results().consumers()
        forged = Notification(call.id, "progress", "t.none", nonce="0123456789abcdef0123",
                              progress={"fraction": 0.9, "note": "forged"})
        consumer.dispatch(app.seal(forged.encode(app.serializer)))
        own = Notification(call.id, "progress", "t.none", nonce=call.nonce,
                           progress={"fraction": 0.1, "note": "own"})
        consumer.dispatch(app.seal(own.encode(app.serializer)))
        assert call.progress == Progress(0.1, "own")
    finally:
        app.close()


def test_progress_sent_at_once_reaches_a_producer_whose_subscription_is_slow(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy.notifiers.sqlite import SQLiteNotifier

    # Given a notifier whose subscription takes half a second to open
    subscribe = SQLiteNotifier.subscribe

    def slow(self: SQLiteNotifier, channel: str, pending: Any) -> Any:
        time.sleep(0.5)
        return subscribe(self, channel, pending)

    monkeypatch.setattr(SQLiteNotifier, "subscribe", slow)
    app = ivy.Ivy(sqlite_url, sqlite_url)
    go_on = threading.Event()
    queue = qname()
    try:
        @app.register_task(name="t.early", queue=queue)
        def early() -> int:
            ivy.current().progress(0.5, "half")
            go_on.wait(20)
            return 1

        app.listen(queue=queue, block=False)
        # When the first call is sent, to a worker that reports progress as it starts
        call = app.delayed_call(early)
        # Then that progress reaches the producer: its consumer listened before the send
        wait_for(lambda: call.progress is not None, timeout=10, message="the progress")
        assert call.progress == Progress(0.5, "half")
        go_on.set()
        assert call.result(20) == 1
    finally:
        go_on.set()
        app.close()
