"""The result path holds whatever user code does: cancelled awaits, closed loops, callbacks that
raise, block or wait on other calls; rejected notifications are named; a producer can switch
notifiers; pending calls are bounded; ownership and use after close are clear."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from common import ROOT, wait_for

import ivy
from ivy.message import Notification
from ivy.notifiers.memory import MemoryNotifier
from ivy.queues.memory import MemoryQueueBackend
from ivy.serialization import get_serializer

JSON = get_serializer("json")


def gated(app: ivy.Ivy, queue: str = "q") -> tuple[ivy.Task[Any, Any], threading.Event]:
    """A task that returns its argument once the returned event is set."""
    gate = threading.Event()

    @app.register_task(name=f"t.gated.{queue}", queue=queue)
    def wait_then(x: Any) -> Any:
        gate.wait(30)
        return x

    return wait_then, gate


def test_timed_out_await_does_not_silence_later_results(app: ivy.Ivy) -> None:
    # Given a call awaited with a timeout on a loop that then closes
    task, gate = gated(app)

    @app.register_task(name="t.echo", queue="q")
    def echo(x: Any) -> Any:
        return x

    app.listen(queue="q", concurrency=2, block=False)
    call = app.delayed_call(task, "late")

    async def wait_briefly() -> Any:
        return await asyncio.wait_for(call, 0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(wait_briefly())
    assert call._waiters == []  # the cancelled await left nothing behind
    # When its result arrives after the loop is gone
    gate.set()
    assert call.result(20) == "late"
    # Then later calls still complete, by result() and by await
    assert app.delayed_call(echo, 1).result(20) == 1

    async def wait_fully() -> Any:
        return await app.delayed_call(echo, 2)

    assert asyncio.run(wait_fully()) == 2


def test_a_waiter_on_a_closed_loop_is_harmless() -> None:
    # Given an await whose loop was closed without cancelling it (a stopped, closed loop)
    call: ivy.Call[int] = ivy.Call("c1", "t.x", "q")
    loop = asyncio.new_event_loop()

    async def wait() -> int:
        return await call

    task = loop.create_task(wait())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()  # the awaiting task never finished
    assert len(call._waiters) == 1
    # When the result arrives, the wake-up finds the loop closed and does nothing
    assert call._settle(Notification("c1", "successful", result=5))
    assert call.result(5) == 5
    task._log_destroy_pending = False  # type: ignore[attr-defined]


def test_callbacks_that_raise_block_or_wait_do_not_stop_delivery(app: ivy.Ivy) -> None:
    @app.register_task(name="t.echo", queue="q")
    def echo(x: Any) -> Any:
        return x

    app.listen(queue="q", concurrency=2, block=False)
    release = threading.Event()
    seen: list[Any] = []

    def raises(err: Any, result: Any) -> None:
        raise RuntimeError("a callback that fails")

    def blocks(err: Any, result: Any) -> None:
        seen.append(("blocking", result))
        release.wait(30)

    # Given a callback that raises and one that blocks
    first = app.delayed_call(echo, "raises", callback=raises)
    assert first.result(20) == "raises"
    blocked = app.delayed_call(echo, "blocks", callback=blocks)
    wait_for(lambda: ("blocking", "blocks") in seen, timeout=20, message="blocking callback")
    # When other calls complete meanwhile, one of them with a callback that waits for
    # another call's result
    other = app.delayed_call(echo, "other")

    def waits_on_other(err: Any, result: Any) -> None:
        seen.append(("waited", other.result(20)))

    waiting = app.delayed_call(echo, "waits", callback=waits_on_other)
    # Then all of them are delivered; only the blocked call waits for its own callback
    assert waiting.result(20) == "waits"
    assert ("waited", "other") in seen
    assert [app.delayed_call(echo, i).result(20) for i in range(3)] == [0, 1, 2]
    assert blocked.status == "successful" and not blocked.done()
    release.set()
    assert blocked.result(20) == "blocks"
    assert blocked.status == "done"


def test_a_rejected_notification_is_named_in_the_timeout(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("IVY_SIGNING_KEY", "k1")
    url = f"memory://{uuid.uuid4().hex}"
    with ivy.Ivy(url, url) as app:
        @app.register_task(name="t.v", queue="nobody")
        def v() -> int:
            return 1

        call = app.delayed_call(v)
        # Given two notifications for the call that the producer refuses: unsigned, twice
        forged = Notification(call.id, "successful", result="forged").encode(JSON)
        app.backends.results.dispatch(forged)
        app.backends.results.dispatch(forged)
        # and one that does not match the schema (the id is still readable)
        app.backends.results.dispatch(
            app.seal(json.dumps({"ivy": 1, "id": call.id, "status": "??"}).encode()))
        # Then waiting for the call says why nothing came
        with pytest.raises(ivy.ResultTimeout) as exc:
            call.result(0.2)
        message = str(exc.value)
        assert "3 notifications for this call were rejected" in message
        assert "unsigned" in message and "does not match" in message
        assert call.rejected[0].startswith("notification refused")


def test_switching_the_notifier_delivers_old_and_new_calls() -> None:
    # Given workers that report to two different notifiers
    queue_url = f"memory://{uuid.uuid4().hex}"
    note_a, note_b = f"memory://{uuid.uuid4().hex}", f"memory://{uuid.uuid4().hex}"
    worker_a, worker_b = ivy.Ivy(queue_url, note_a), ivy.Ivy(queue_url, note_b)
    producer = ivy.Ivy(queue_url, note_a)
    gates = {}
    for app in (worker_a, worker_b, producer):
        for queue in ("qa", "qb"):
            _, gates[app, queue] = gated(app, queue)
    worker_a.listen(queue="qa", block=False)
    worker_b.listen(queue="qb", block=False)
    try:
        # When a call is pending on notifier A and the producer switches to B
        producer.start_notification_consumer(note_a)
        old = producer.delayed_call("t.gated.qa", "old")
        old_consumer = producer.backends.results.current
        producer.start_notification_consumer(note_b)
        assert producer.backends.results.current is not old_consumer
        new = producer.delayed_call("t.gated.qb", "new")
        gates[worker_b, "qb"].set()
        # Then the new call completes through B, and the old one still through A
        assert new.result(20) == "new"
        assert old_consumer is not None and old_consumer.alive
        gates[worker_a, "qa"].set()
        assert old.result(20) == "old"
        # and the old consumer stops and its notifier is closed once nothing waits on it
        wait_for(lambda: not old_consumer.alive and not producer.backends.results.retired,
                     timeout=10,
                 message="the retired consumer to stop")
        assert not producer.backends.owns(old_consumer.notifier)
        # Calling again with the current notifier changes nothing
        current = producer.backends.results.current
        producer.start_notification_consumer(note_b)
        assert producer.backends.results.current is current
    finally:
        for app in (worker_a, worker_b, producer):
            for queue in ("qa", "qb"):
                gates[app, queue].set()
            app.close()


def test_a_call_added_while_the_notifier_switches_is_held_by_a_live_consumer() -> None:
    # Given a producer on notifier A, adding a call to A's consumer (issue 20, row 9)
    from ivy.call import Call
    from ivy.message import new_id

    note_a, note_b = f"memory://{uuid.uuid4().hex}", f"memory://{uuid.uuid4().hex}"
    producer = ivy.Ivy(f"memory://{uuid.uuid4().hex}", note_a)
    producer.start_notification_consumer(note_a)
    old = producer.backends.results.current
    assert old is not None
    inside, go = threading.Event(), threading.Event()
    add = old.add

    def slow_add(call: Call[Any]) -> None:
        inside.set()
        go.wait(10)
        add(call)

    old.add = slow_add  # type: ignore[method-assign]
    call: Call[Any] = Call(new_id(), "t.late", "q")
    adding = threading.Thread(target=producer.backends.results.add, args=(call,))
    adding.start()
    try:
        assert inside.wait(10)
        # When the producer switches to notifier B meanwhile
        switched = threading.Event()
        switching = threading.Thread(target=lambda: (
            producer.start_notification_consumer(note_b), switched.set()))
        switching.start()
        if switched.wait(1.0):  # the switch did not wait for the add: A may stop at once
            wait_for(lambda: not old.alive, timeout=10, message="the retired consumer to stop")
        go.set()
        adding.join(10)
        switching.join(10)
        # Then the call is held by a consumer that still runs: its result can arrive
        holders = [c for c in producer.backends.results.consumers() if call.id in c.pending_ids()]
        assert holders and all(c.alive for c in holders)
    finally:
        go.set()
        producer.close()


def test_module_api_switches_notifier(tmp_path: Path) -> None:
    # The module-level functions, as a notebook that reloads its settings uses them.
    script = f"""
import ivy, threading
a, b = "sqlite:///{tmp_path}/a.db", "sqlite:///{tmp_path}/b.db"
ivy.setup_queue("sqlite:///{tmp_path}/q.db")

@ivy.register_task(name="t.double", queue="q")
def double(n):
    return 2 * n

ivy.start_notification_consumer(a)
worker_a = ivy.Ivy("sqlite:///{tmp_path}/q.db", a)
worker_a.register_task(double.func, name="t.double", queue="q")
w = worker_a.listen(queue="q", block=False)
print(ivy.delayed_call(double, 1).result(20))
w.stop()
ivy.setup_queue("sqlite:///{tmp_path}/q2.db")
ivy.start_notification_consumer(b)
worker_b = ivy.Ivy("sqlite:///{tmp_path}/q2.db", b)
worker_b.register_task(double.func, name="t.double", queue="q")
worker_b.listen(queue="q", block=False)
print(ivy.delayed_call(double, 2).result(20))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "4"]


def test_pending_calls_expire_after_pending_ttl() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    with ivy.Ivy(url, url, pending_ttl=0.3) as app:
        @app.register_task(name="t.never", queue="nobody")
        def never() -> None: ...

        errors: list[Any] = []
        call = app.delayed_call(never, callback=lambda err, result: errors.append(err))
        assert app.pending_calls() == [call.id]
        # Then with no worker the call is settled with ResultExpired and forgotten
        with pytest.raises(ivy.RemoteTaskError) as exc:
            call.result(10)
        assert exc.value.type == "ResultExpired"
        assert "pending_ttl" in exc.value.message
        assert app.pending_calls() == []
        wait_for(lambda: len(errors) == 1, message="the callback with the error")
    with pytest.raises(ivy.ConfigurationError, match="pending_ttl"):
        ivy.Ivy(url, url, pending_ttl=0)


def test_import_never_fails_on_a_malformed_signing_key() -> None:
    script = """
import ivy
print("imported")
try:
    ivy.send_task("t.x", [1], queue="q")
except ivy.ConfigurationError as exc:
    print("error:", exc)
"""
    env = {**os.environ, "IVY_SIGNING_KEY": ",", "IVY_QUEUE_URL": "memory://x",
           "IVY_NOTIFIER_URL": "memory://x"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported\n")
    assert "error: IVY_SIGNING_KEY is malformed" in out.stdout


def test_close_closes_only_what_it_built_and_refuses_use_after(tmp_path: Path) -> None:
    # Given one app on backend objects the caller made, and one on URLs
    name = uuid.uuid4().hex
    backend, notifier = MemoryQueueBackend(name), MemoryNotifier(name)
    given = ivy.Ivy(backend, notifier)
    built = ivy.Ivy(f"sqlite:///{tmp_path / 'ivy.db'}", f"sqlite:///{tmp_path / 'ivy.db'}")
    for app in (given, built):
        @app.register_task(name="t.never", queue="nobody")
        def never() -> None: ...

    pending = [given.delayed_call("t.never"), built.delayed_call("t.never")]
    built_backend = built.queue_backend
    given.close()
    built.close()
    # Then the objects handed in still work, and what ivy built is closed
    backend.publish("q", b"{}")
    assert backend.size("q") == 1
    notifier.publish("c", "id", b"{}", final=True)
    with pytest.raises(Exception, match="closed"):  # sqlite3: "a closed database"
        built_backend.size("nobody")
    # calls that were waiting fail at once instead of hanging
    for call in pending:
        with pytest.raises(ivy.RemoteTaskError) as exc:
            call.result(1)
        assert exc.value.type == "IvyClosed"
    # and using a closed app says so
    for app in (given, built):
        with pytest.raises(ivy.IvyError, match="was closed"):
            app.delayed_call("t.never")
        with pytest.raises(ivy.IvyError, match="was closed"):
            app.listen(queue="nobody", block=False)
    given.close()  # closing twice is fine


# -- the original's call forms ------------------------------------------------------------------


def test_register_task_takes_the_originals_options_dict() -> None:
    app = ivy.Ivy("memory://opts", "memory://opts")
    results: list[Any] = []

    def factorial(number: int, callback: Any) -> None:
        callback(None, 42)

    task = app.register_task(factorial, results.append, {
        "name": "testpackage.factorial", "queue": "testpackage", "priority": 0, "retry": True,
        "maxRetries": 10, "route": "testpackage.route1", "reserveTime": 3600})
    assert (task.name, task.queue, task.priority, task.retry, task.max_retries, task.route,
            task.reserve_time, task.finished, task.style) == (
        "testpackage.factorial", "testpackage", 0, True, 10, "testpackage.route1", 3600, results
        .append, "callback")
    # keywords beside the dict, when they agree; the dict as the decorator's argument
    same = app.register_task(factorial, None, {"name": "t.same", "queue": "q"}, queue="q")
    assert same.queue == "q"

    @app.register_task({"name": "t.decorated", "maxRetries": 2})
    def decorated() -> None: ...

    assert (decorated.name, decorated.max_retries, decorated.queue) == ("t.decorated", 2, "ivy")
    app.close()


@pytest.mark.parametrize(("options", "keywords", "match"), [
    ({"name": "t.a", "queue": "x"}, {"queue": "y"}, "contradicts the keyword queue='y'"),
    ({"name": "t.a", "maxRetries": 1, "max_retries": 2}, {}, "contradict each other"),
    ({"name": "t.a", "retries": 1}, {}, "unknown task option 'retries'"),
    ({"name": "t.a", "route": ""}, {}, "route '' for task 't.a'"),
])
def test_register_task_refuses_options_that_contradict(options: dict[str, Any],
                                                       keywords: dict[str, Any],
                                                       match: str) -> None:
    app = ivy.Ivy("memory://bad-opts", "memory://bad-opts")
    with pytest.raises(ivy.ConfigurationError, match=match):
        app.register_task(lambda: None, None, options, **keywords)
    app.close()


def test_listen_refuses_malformed_message_options() -> None:
    app = ivy.Ivy("memory://listen-opts", "memory://listen-opts")
    for messages, match in (
            ([1], "must map task names"),
            ({"t.a": {"reserve": 3}}, "the one option per task is 'reserveTime'"),
            ({"t.a": {"reserveTime": -1}}, "must be one number of seconds > 0")):
        with pytest.raises(ivy.ConfigurationError, match=match):
            app.listen({"type": "memory", "queue": "q", "messages": messages}, block=False)
    app.close()
