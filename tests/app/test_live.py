"""Live workers, task events and waiting for many calls, on every backend pairing (memory,
SQLite, RabbitMQ + Redis, RabbitMQ alone): heartbeats in the notifier, the events middleware,
``ivy.wait``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.notifiers.base import Subscription


def my_workers(app: ivy.Ivy, since: float) -> list[dict[str, Any]]:
    """The heartbeats of workers of this process started since ``since`` (Redis is shared by
    the tests of a run)."""
    return [w for w in app.workers() if w["pid"] == os.getpid() and w["started"] >= since]


def collect(sub: Subscription, until: Any, timeout: float = 20) -> list[dict[str, Any]]:
    """Events from ``sub`` until ``until(events)`` holds; fail after ``timeout`` seconds."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for events; got {events}")
        events.extend(json.loads(b) for b in sub.get(0.2))
    return events


# -- heartbeats ------------------------------------------------------------------------------

def test_worker_heartbeat_shows_its_counts_and_goes_when_it_stops(app: ivy.Ivy) -> None:
    # Given a worker with concurrency 2 that beats every 0.2 s
    since = time.time() - 1

    @app.register_task(name="live.ok", queue="q")
    def ok() -> str:
        return "ok"

    @app.register_task(name="live.bad", queue="q")
    def bad() -> None:
        raise ValueError("bad")

    worker = app.listen(queue="q", concurrency=2, block=False, heartbeat=0.2)
    # Then its heartbeat is there at once, with what it is
    [beat] = my_workers(app, since)
    assert beat["queues"] == ["q"] and beat["concurrency"] == 2
    assert beat["processed"] == 0 and beat["failed"] == 0 and beat["events"] is False
    assert beat["name"].startswith(worker.name)
    # When it runs two calls that succeed and one that fails
    assert app.delayed_call(ok).result(20) == "ok"
    assert app.delayed_call(ok).result(20) == "ok"
    with pytest.raises(ivy.RemoteTaskError):
        app.delayed_call(bad).result(20)
    # Then a later heartbeat counts them
    wait_for(lambda: [(w["processed"], w["failed"]) for w in my_workers(app, since)] == [(3, 1)],
             message="a heartbeat with 3 processed, 1 failed")
    [beat] = my_workers(app, since)
    assert beat["last_seen"] > beat["started"]
    # When the worker stops, its heartbeat goes at once
    worker.stop()
    wait_for(lambda: my_workers(app, since) == [], timeout=2,
             message="the stopped worker's heartbeat to go")


def test_heartbeat_of_a_stopped_worker_goes_before_its_ttl(app: ivy.Ivy) -> None:
    # Given a worker whose heartbeat lives 15 s (interval 5 s)
    since = time.time() - 1
    app.register_task(lambda: None, name="live.nothing", queue="q")
    worker = app.listen(queue="q", block=False)
    assert len(my_workers(app, since)) == 1
    # When it stops, the entry is removed, not left to expire
    started = time.monotonic()
    worker.stop()
    wait_for(lambda: my_workers(app, since) == [], timeout=5, message="the heartbeat to go")
    assert time.monotonic() - started < 5


def test_two_workers_of_one_process_have_a_heartbeat_each(app: ivy.Ivy) -> None:
    since = time.time() - 1
    app.register_task(lambda: None, name="live.nothing", queue="q")
    first = app.listen(queue="q", block=False)
    app.listen(queue="q", block=False)
    names = [w["name"] for w in my_workers(app, since)]
    assert len(set(names)) == 2, names
    first.stop()
    wait_for(lambda: len(my_workers(app, since)) == 1, timeout=5,
             message="only the first worker's heartbeat to go")


def test_no_heartbeat_when_disabled(app: ivy.Ivy) -> None:
    since = time.time() - 1
    app.register_task(lambda: None, name="live.nothing", queue="q")
    app.listen(queue="q", block=False, heartbeat=None)
    assert my_workers(app, since) == []


# -- events ----------------------------------------------------------------------------------

def test_events_of_success_failure_retry_and_dead_letter(app: ivy.Ivy) -> None:
    # Given a worker started with events, and a subscription to them
    @app.register_task(name="live.double", queue="q")
    def double(n: int) -> int:
        return 2 * n

    @app.register_task(name="live.fails", queue="q", max_retries=1)
    def fails() -> None:
        raise ValueError("always")

    @app.register_task(name="live.fails_once_only", queue="q")
    def fails_once_only() -> None:
        raise KeyError("k")

    worker = app.listen(queue="q", block=False, events=True)
    assert worker.notifier is not None
    sub = worker.notifier.subscribe_events()
    try:
        # When calls succeed, fail without retries, and fail with a retry then dead-letter
        ok = app.delayed_call(double, 21)
        assert ok.result(20) == 42
        no_retry = app.delayed_call(fails_once_only)
        with pytest.raises(ivy.RemoteTaskError):
            no_retry.result(20)
        retried = app.delayed_call(fails)
        with pytest.raises(ivy.RemoteTaskError):
            retried.result(20)
        # and a message that cannot be decoded arrives
        app.queue_backend.publish("q", b"not json")

        def done(events: list[dict[str, Any]]) -> bool:
            return (any(e["id"] == retried.id and e["event"] == "dead_lettered" for e in events)
                    and any(e["id"] is None for e in events))

        events = collect(sub, done)
    finally:
        sub.close()

    def of(call: ivy.Call[Any]) -> list[str]:
        return [e["event"] for e in events if e["id"] == call.id]

    # Then each call's events come in order
    assert of(ok) == ["received", "started", "succeeded"]
    assert of(no_retry) == ["received", "started", "failed"]
    assert of(retried) == ["received", "started", "failed", "retried",
                           "received", "started", "failed", "dead_lettered"]
    # with the fields a tool needs, and no task data
    [succeeded] = [e for e in events if e["id"] == ok.id and e["event"] == "succeeded"]
    assert succeeded["name"] == "live.double" and succeeded["queue"] == "q"
    assert succeeded["worker"] == worker.name and succeeded["attempt"] == 0
    assert succeeded["runtime"] >= 0 and abs(succeeded["time"] - time.time()) < 60
    assert "result" not in succeeded and "args" not in succeeded
    [received] = [e for e in events if e["id"] == ok.id and e["event"] == "received"]
    assert received["sent"] <= received["time"]
    failed = [e for e in events if e["id"] == retried.id and e["event"] == "failed"]
    assert [e["attempt"] for e in failed] == [0, 1]
    assert failed[0]["error"] == {"type": "ValueError", "message": "always"}
    [retry] = [e for e in events if e["id"] == retried.id and e["event"] == "retried"]
    assert retry["delay"] >= 0
    [dead] = [e for e in events if e["id"] == retried.id and e["event"] == "dead_lettered"]
    assert "failed 2 times" in dead["reason"]
    [undecodable] = [e for e in events if e["id"] is None]
    assert undecodable["event"] == "dead_lettered" and undecodable["name"] is None


def test_no_events_without_events_on(app: ivy.Ivy) -> None:
    @app.register_task(name="live.double", queue="q")
    def double(n: int) -> int:
        return 2 * n

    worker = app.listen(queue="q", block=False)
    assert worker.notifier is not None
    sub = worker.notifier.subscribe_events()
    try:
        assert app.delayed_call(double, 1).result(20) == 2
        assert sub.get(0.5) == []
    finally:
        sub.close()


def test_events_middleware_survives_a_failing_notifier(app: ivy.Ivy,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # Given a worker whose notifier refuses every event
    @app.register_task(name="live.double", queue="q")
    def double(n: int) -> int:
        return 2 * n

    worker = app.listen(queue="q", block=False, events=True)
    assert worker.notifier is not None

    def refuse(bodies: Any) -> None:
        raise ConnectionError("events server gone")

    worker.notifier.publish_event = refuse  # type: ignore[method-assign]
    worker.notifier.publish_events = refuse  # type: ignore[method-assign]
    # Then tasks still run and report, and the loss is logged once, not per event
    assert [app.delayed_call(double, i).result(20) for i in range(3)] == [0, 2, 4]

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "events server gone" in r.getMessage()]

    wait_for(lines, timeout=10)
    assert len(lines()) == 1, lines()


# -- ivy.wait --------------------------------------------------------------------------------

def register_pause(app: ivy.Ivy) -> ivy.Task[Any, Any]:
    @app.register_task(name="live.pause", queue="q")
    def pause(seconds: float, value: Any) -> Any:
        time.sleep(seconds)
        return value

    return pause


def test_wait_returns_results_in_the_order_given(app: ivy.Ivy) -> None:
    # Given calls that finish in the reverse of the order they were sent
    pause = register_pause(app)
    app.listen(queue="q", concurrency=3, block=False)
    calls = [app.delayed_call(pause, 0.6 - 0.25 * i, i) for i in range(3)]
    # Then wait gives their results in the order of the list
    assert app.wait(calls, timeout=30) == [0, 1, 2]
    assert ivy.wait([]) == []


def test_wait_raises_the_first_failure_at_once(app: ivy.Ivy) -> None:
    # Given a call held until the test lets it go, listed before one that fails at once
    release = threading.Event()

    @app.register_task(name="live.held", queue="q")
    def held(value: str) -> str:
        release.wait(30)
        return value

    @app.register_task(name="live.boom", queue="q")
    def boom() -> None:
        raise ValueError("boom")

    app.listen(queue="q", concurrency=2, block=False)
    slow, failing = app.delayed_call(held, "slow"), app.delayed_call(boom)
    # Then wait raises the failure while the held one still runs
    with pytest.raises(ivy.RemoteTaskError, match="boom") as raised:
        app.wait([slow, failing], timeout=30)
    assert raised.value.call_id == failing.id
    assert not slow.done()
    # and with return_exceptions the error takes the call's place
    release.set()
    outcome = app.wait([slow, failing], timeout=30, return_exceptions=True)
    assert outcome[0] == "slow" and isinstance(outcome[1], ivy.RemoteTaskError)


def test_wait_has_one_deadline_and_says_how_many_finished(app: ivy.Ivy) -> None:
    pause = register_pause(app)
    app.listen(queue="q", block=False)
    done = app.delayed_call(pause, 0, "done")
    assert done.result(20) == "done"
    stuck = app.send_task("live.nobody", queue="unserved")
    started = time.monotonic()
    with pytest.raises(ivy.ResultTimeout, match=rf"1 of 2 calls finished within 0.5 s; still "
                                                rf"waiting for call {stuck.id}"):
        app.wait([done, stuck], timeout=0.5)
    assert 0.45 < time.monotonic() - started < 5


def test_wait_with_progress_draws_a_bar_on_stderr(app: ivy.Ivy,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pause = register_pause(app)
    app.listen(queue="q", concurrency=2, block=False)
    calls = [app.delayed_call(pause, 0, i) for i in range(5)]
    assert app.wait(calls, timeout=30, progress=True) == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert "5/5" in captured.err and captured.out == ""


def test_wait_same_call_twice_and_from_threads(app: ivy.Ivy) -> None:
    pause = register_pause(app)
    app.listen(queue="q", concurrency=2, block=False)
    call = app.delayed_call(pause, 0.2, "x")
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(ivy.wait([call], timeout=30)))
    waiter.start()
    assert app.wait([call, call], timeout=30) == ["x", "x"]
    waiter.join(30)
    assert results == [["x"]]


def test_wait_progress_without_tqdm_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if it were not installed
    with pytest.raises(ivy.ConfigurationError, match=r"pip install 'ivy-queue\[progress\]'"):
        ivy.wait([], progress=True)


CLOSE_WITH_EVENTS = """
import sys, time
import ivy
from ivy.message import Message, new_id

path = sys.argv[1]
for round in range(10):
    app = ivy.Ivy(f"sqlite:///{path}/{round}.db", f"sqlite:///{path}/{round}.db")

    @app.register_task(name="close.noop", queue="q")
    def noop(i):
        return i

    bodies = [Message(id=new_id(), name="close.noop", args=[i], queue="q",
                      reply_to="ivy:notify:none").encode(app.serializer) for i in range(1500)]
    for future in app.queue_backend.send_many("q", bodies):
        future.result(60)
    worker = app.listen(queue="q", block=False, events=True)
    deadline = time.monotonic() + 60
    while worker.processed < 1500 and time.monotonic() < deadline:
        time.sleep(0.005)
    app.close()  # at once, with events still queued for the publisher thread
    print("round", round, worker.processed, flush=True)
"""


def test_closing_an_app_while_its_events_are_published_is_safe(tmp_path: Any) -> None:
    # Given workers publishing task events on SQLite, their apps closed the moment the last
    # task ran (the events publisher thread used the notifier's connection as it was closed,
    # and the process died of a segmentation fault)
    import subprocess

    done = subprocess.run([sys.executable, "-c", CLOSE_WITH_EVENTS, str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    # Then every round ends normally
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.split("\n")[:10] == [f"round {r} 1500" for r in range(10)]


def test_flushing_events_waits_for_the_batch_being_sent() -> None:
    # Given an events publisher whose notifier takes a while to send each batch
    from ivy.middleware.events import Events
    from ivy.notifiers.memory import MemoryNotifier

    sent: list[bytes] = []

    class Slow(MemoryNotifier):
        def publish_events(self, bodies: list[bytes]) -> None:
            time.sleep(0.2)
            sent.extend(bodies)

    events = Events(Slow("events-flush"), worker="w")
    message = ivy.Message(id="m", name="t.x", args=[], queue="q")
    # When events are queued and flushed, some of them already taken by the publisher
    events.before_task(message)
    wait_for(lambda: events._queue.empty(), timeout=5)
    events.after_task(message, 1, None)
    # Then flush returns only once every one of them was sent, in order
    assert events.flush(10)
    assert [json.loads(b)["event"] for b in sent] == ["received", "started", "succeeded"]
    events.close()
