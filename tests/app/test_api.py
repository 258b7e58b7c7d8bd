"""The public API end to end on each embedded backend: styles, ways to get a result, errors,
retries, timeouts, statuses. Producer and worker share one process here; the multi-process
tests are in test_processes.py."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.call import Call


def start(app: ivy.Ivy, queue: str = "q", concurrency: int = 2) -> ivy.Worker:
    return app.listen(queue=queue, concurrency=concurrency, block=False)


# -- the three styles and the four ways to get a result ----------------------------------------


def test_plain_function_result_and_local_call(app: ivy.Ivy) -> None:
    @app.register_task(name="t.factorial", queue="q")
    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * factorial.func(n - 1)

    assert factorial(5) == 120  # still callable locally
    start(app)
    assert app.delayed_call(factorial, 5).result(10) == 120
    assert app.delayed_call("t.factorial", 6).result(10) == 720
    assert app.delayed_call(factorial.func, 3).result(10) == 6


def test_async_task_and_await(app: ivy.Ivy) -> None:
    @app.register_task(name="t.double", queue="q")
    async def double(n: int) -> int:
        await asyncio.sleep(0.01)
        return n * 2

    assert double.style == "async"
    start(app)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(app.delayed_call(double, i) for i in range(5))))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_callback_style_task_as_in_the_original(app: ivy.Ivy) -> None:
    finished: list[Any] = []
    got: list[tuple[Any, Any]] = []

    def factorial(number: int, callback: Any) -> None:
        threading.Timer(0.01, callback, (None, 42)).start()  # called later, from another thread

    task = app.register_task(factorial, finished.append, name="testpackage.factorial",
                             queue="q")
    assert task.style == "callback"
    start(app)
    # the original's call: the last positional callable is the callback
    call = app.delayed_call(factorial, 5, lambda err, result: got.append((err, result)))
    assert call.result(10) == 42
    assert got == [(None, 42)]
    assert finished == [42]
    assert call.status == "done"


def test_callback_style_errors_arrive_as_remote_errors(app: ivy.Ivy) -> None:
    def fails(kind: str, cb: Any) -> None:
        cb(ValueError("bad value") if kind == "exc" else "plain string error")

    app.register_task(fails, name="t.fails", queue="q")
    start(app)
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call("t.fails", "exc").result(10)
    assert (exc.value.type, exc.value.message) == ("ValueError", "bad value")
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call("t.fails", "str").result(10)
    assert (exc.value.type, exc.value.message) == ("Error", "plain string error")


def test_kwargs_travel(app: ivy.Ivy) -> None:
    @app.register_task(name="t.greet", queue="q")
    def greet(name: str, *, greeting: str = "hello") -> str:
        return f"{greeting} {name}"

    start(app)
    assert app.delayed_call(greet, "ivy", greeting="hi").result(10) == "hi ivy"


def test_status_moves_scheduled_running_done(app: ivy.Ivy) -> None:
    release = threading.Event()

    @app.register_task(name="t.gate", queue="q")
    def gate() -> str:
        release.wait(10)
        return "open"

    call = app.delayed_call(gate)
    assert call.status == "scheduled"
    start(app)
    wait_for(lambda: call.status == "running", message="status running")
    assert not call.done()
    release.set()
    assert call.result(10) == "open"
    assert call.status == "done"


def test_result_wait_that_runs_out_raises_timeout_error(app: ivy.Ivy) -> None:
    @app.register_task(name="t.nobody", queue="unserved")
    def nobody() -> None: ...

    call = app.delayed_call(nobody)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as exc:
        call.result(timeout=0.2)
    assert isinstance(exc.value, ivy.ResultTimeout)
    assert time.monotonic() - started >= 0.19
    assert "unserved" in str(exc.value)
    assert call.status == "scheduled"


def test_task_error_reaches_result_callback_and_await(app: ivy.Ivy) -> None:
    @app.register_task(name="t.boom", queue="q")
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    start(app)
    got: list[Any] = []
    call = app.delayed_call(boom, 1, callback=lambda err, result: got.append((err, result)))
    with pytest.raises(ivy.RemoteTaskError) as exc:
        call.result(10)
    err = exc.value
    assert (err.type, err.message, err.task, err.call_id) == ("ValueError", "bad 1", "t.boom",
                                                              call.id)
    assert "in boom" in err.traceback
    assert got == [(err, None)]
    assert call.status == "errored"

    async def main() -> None:
        with pytest.raises(ivy.RemoteTaskError):
            await app.delayed_call(boom, 2)

    asyncio.run(main())
    # a failure without retries is an outcome, not a dead letter
    assert app.queue_backend.dead_letters("q") == []


def test_finished_runs_once_per_successful_call(app: ivy.Ivy) -> None:
    results: list[int] = []

    @app.register_task(finished=results.append, name="t.sq", queue="q")
    def sq(n: int) -> int:
        return n * n

    start(app)
    calls = [app.delayed_call(sq, i) for i in range(10)]
    for c in calls:
        c.result(10)
    assert sorted(results) == [i * i for i in range(10)]


# -- producer-side checks -------------------------------------------------------------------


def test_non_json_argument_is_refused_with_its_name(app: ivy.Ivy) -> None:
    @app.register_task(name="t.when", queue="q")
    def when(label: str, at: Any) -> None: ...

    with pytest.raises(ivy.SerializationError) as exc:
        app.delayed_call(when, "x", datetime.datetime(2026, 1, 1))
    assert "argument 2 (datetime.datetime(2026, 1, 1, 0, 0))" in str(exc.value)
    assert "'t.when'" in str(exc.value)
    with pytest.raises(ivy.SerializationError, match="keyword argument 'at'"):
        app.delayed_call(when, "x", at={1: "int key"})
    with pytest.raises(ivy.SerializationError, match="argument 2"):
        app.delayed_call(when, "x", float("nan"))
    assert app.queue_backend.size("q") == 0  # nothing was sent


def test_wrong_argument_count_is_refused_before_sending(app: ivy.Ivy) -> None:
    @app.register_task(name="t.one", queue="q")
    def one(a: int) -> int:
        return a

    with pytest.raises(TypeError, match=r"wrong arguments for task 't\.one'"):
        app.delayed_call(one, 1, 2)
    assert app.queue_backend.size("q") == 0


def test_unknown_task_lists_registered_ones(app: ivy.Ivy) -> None:
    @app.register_task(name="pkg.factorial", queue="q")
    def factorial(n: int) -> int:
        return n

    with pytest.raises(ivy.TaskNotRegistered) as exc:
        app.delayed_call("pkg.fact", 5)
    assert "'pkg.fact'" in str(exc.value) and "pkg.factorial" in str(exc.value)


def test_oversized_call_is_refused(urls: tuple[str, str]) -> None:
    with ivy.Ivy(*urls, max_message_bytes=1000) as app:
        @app.register_task(name="t.big", queue="q")
        def big(data: str) -> None: ...

        with pytest.raises(ivy.MessageTooLarge, match="over the limit of 1000 bytes"):
            app.delayed_call(big, "x" * 1000)


def test_registration_errors_name_the_value(app: ivy.Ivy) -> None:
    with pytest.raises(ivy.ConfigurationError, match="priority 300"):
        app.register_task(lambda: None, name="t.p", priority=300)
    with pytest.raises(ivy.ConfigurationError, match="timeout -1"):
        app.register_task(lambda: None, name="t.t", timeout=-1)

    def a() -> None: ...

    def b() -> None: ...

    app.register_task(a, name="t.same")
    with pytest.raises(ivy.ConfigurationError, match="already registered"):
        app.register_task(b, name="t.same")


def test_the_registry_lists_its_tasks_in_the_order_of_their_names(app: ivy.Ivy) -> None:
    def b() -> None: ...

    def a() -> None: ...

    second = app.register_task(b, name="t.b", queue="q2")
    first = app.register_task(a, name="t.a", queue="q1")
    assert app.registry.tasks() == [first, second]
    assert [t.name for t in app.registry.tasks()] == app.registry.names()


def test_delay_defers_the_call(app: ivy.Ivy) -> None:
    @app.register_task(name="t.now", queue="q")
    def now() -> float:
        return time.time()

    start(app)
    sent = time.time()
    call = app.send_task(now, delay=0.5)
    assert call.result(10) >= sent + 0.45


# -- worker behaviour -------------------------------------------------------------------------


def test_retries_with_backoff_then_success(app: ivy.Ivy) -> None:
    attempts: list[float] = []

    @app.register_task(name="t.flaky", queue="q", retry=True, max_retries=3)
    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    start(app)
    call = app.delayed_call(flaky)
    assert call.result(10) == "ok"
    assert len(attempts) == 3
    assert call.attempt == 2
    assert app.queue_backend.dead_letters("q") == []


def test_exhausted_retries_are_dead_lettered(app: ivy.Ivy) -> None:
    runs: list[int] = []

    @app.register_task(name="t.never", queue="q", max_retries=2)
    def never() -> None:
        runs.append(1)
        raise RuntimeError("still broken")

    start(app)
    with pytest.raises(ivy.RemoteTaskError, match="still broken"):
        app.delayed_call(never).result(10)
    assert len(runs) == 3
    wait_for(lambda: app.queue_backend.dead_letters("q"), message="dead letter")
    [dead] = app.queue_backend.dead_letters("q")
    assert "failed 3 times" in dead.reason and "RuntimeError: still broken" in dead.reason
    assert app.queue_backend.size("q") == 0


def test_backoff_grows_and_is_capped(app: ivy.Ivy) -> None:
    app.retry_base_delay, app.retry_max_delay = 1.0, 10.0
    assert 0.5 <= app.backoff(0) <= 1.0
    assert 4.0 <= app.backoff(3) <= 8.0
    assert 5.0 <= app.backoff(20) <= 10.0


@pytest.mark.parametrize("style", ["sync", "async", "callback"])
def test_task_timeout(app: ivy.Ivy, style: str) -> None:
    if style == "sync":
        def slow() -> None:
            for _ in range(1000):
                time.sleep(0.01)
    elif style == "async":
        async def slow() -> None:  # type: ignore[misc]
            await asyncio.sleep(10)
    else:
        def slow(callback: Any) -> None:  # type: ignore[misc]
            pass  # never calls back

    app.register_task(slow, name=f"t.slow.{style}", queue="q", timeout=0.3)

    @app.register_task(name="t.after", queue="q")
    def after() -> str:
        return "worker still serves"

    start(app, concurrency=1)
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call(f"t.slow.{style}").result(10)
    assert exc.value.type == "TimeoutError"
    assert "timeout of 0.3 s" in exc.value.message
    assert app.delayed_call(after).result(10) == "worker still serves"


def test_result_that_is_not_json_is_reported(app: ivy.Ivy) -> None:
    @app.register_task(name="t.obj", queue="q")
    def obj() -> Any:
        return object()

    start(app)
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call(obj).result(10)
    assert exc.value.type == "SerializationError"
    assert "result of task 't.obj'" in exc.value.message


def test_concurrency_runs_tasks_at_once(app: ivy.Ivy) -> None:
    barrier = threading.Barrier(4, timeout=10)

    @app.register_task(name="t.meet", queue="q")
    def meet() -> int:
        return barrier.wait()

    start(app, concurrency=4)
    calls = [app.delayed_call(meet) for _ in range(4)]
    assert sorted(c.result(15) for c in calls) == [0, 1, 2, 3]


def test_long_task_keeps_its_message(app: ivy.Ivy) -> None:
    # Given a task whose run is longer than its reservation, and a second worker waiting
    runs: list[int] = []

    @app.register_task(name="t.long", queue="q", reserve_time=0.6)
    def long() -> int:
        runs.append(1)
        time.sleep(1.5)
        return len(runs)

    start(app, concurrency=1)
    start(app, concurrency=1)
    # When it runs, the worker keeps extending the reservation
    assert app.delayed_call(long).result(10) == 1
    # Then the other worker never got the message
    assert runs == [1]


def test_graceful_stop_finishes_in_flight_task(app: ivy.Ivy) -> None:
    started = threading.Event()

    @app.register_task(name="t.inflight", queue="q")
    def inflight() -> str:
        started.set()
        time.sleep(0.3)
        return "finished"

    worker = start(app, concurrency=1)
    call = app.delayed_call(inflight)
    assert started.wait(10)
    worker.stop(timeout=10)
    assert call.result(5) == "finished"
    # its ack follows its stored result, which a notifier may write in the background
    wait_for(lambda: app.queue_backend.size("q") == 0, message="the message acked")


def test_several_queues_in_one_worker(app: ivy.Ivy) -> None:
    @app.register_task(name="t.a", queue="qa")
    def a() -> str:
        return "a"

    @app.register_task(name="t.b", queue="qb")
    def b() -> str:
        return "b"

    app.listen(block=False)  # default: the queues of the registered tasks
    assert [app.delayed_call(a).result(10), app.delayed_call(b).result(10)] == ["a", "b"]


def test_first_result_wins_and_callbacks_run_once() -> None:
    from ivy.message import Notification

    call: Call[int] = Call("id1", "t.x", "q")
    seen: list[Any] = []
    call.add_done_callback(lambda c: seen.append(c.result(0)))
    assert call._settle(Notification("id1", "successful", result=1))
    assert not call._settle(Notification("id1", "successful", result=2))
    assert not call._settle(Notification("id1", "errored", error={"type": "E", "message": ""}))
    assert call.result(5) == 1  # returns once the callback (on a callback thread) ran
    assert seen == [1]


def test_msgpack_serializer(urls: tuple[str, str]) -> None:
    with ivy.Ivy(*urls, serializer="msgpack") as app:
        @app.register_task(name="t.echo", queue="q")
        def echo(x: Any) -> Any:
            return x

        start(app)
        assert app.delayed_call(echo, {"a": [1, 2.5, "three", None]}).result(10) == {
            "a": [1, 2.5, "three", None]}


def test_delayed_calls_sends_a_batch(app: ivy.Ivy) -> None:
    got: list[Any] = []

    @app.register_task(name="t.inc", queue="q")
    def inc(n: int) -> int:
        return n + 1

    start(app)
    calls = app.delayed_calls(inc, [(i,) for i in range(50)],
                              callback=lambda err, result: got.append(result))
    assert [c.result(20) for c in calls] == list(range(1, 51))
    assert sorted(got) == list(range(1, 51))
    with pytest.raises(TypeError, match="wrong arguments"):
        app.delayed_calls(inc, [(1,), (1, 2)])
    assert app.pending_calls() == []  # a batch with a bad call sends nothing


def test_a_worker_and_the_producer_of_one_app_share_one_notifier(tmp_path: Path) -> None:
    # Given an app whose worker starts before its first call
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with ivy.Ivy(url, url) as app:
        @app.register_task(name="share.add", queue="share")
        def add(a: int, b: int) -> int:
            return a + b

        app.listen(queue="share", block=False)
        assert app.delayed_call(add, 1, 2).result(20) == 3
        # Then the results come back through the notifier object the worker publishes with
        # (a second one for the same URL was built before: more connections, for nothing)
        assert app.backends.results.notifier is app.backends.producer_notifier


def test_looking_at_a_failed_call_again_and_again_keeps_its_error_small() -> None:
    # Given a failed call (issue 20, row 11)
    import traceback as tb_module

    from ivy.message import Notification, new_id

    call: Call[int] = Call(new_id(), "t.boom", "q")
    call._settle(Notification(call.id, "errored", "t.boom",
                              error={"type": "ValueError", "message": "bad", "traceback": ""}))

    def frames() -> int:
        try:
            call.result(1)
        except ivy.RemoteTaskError as exc:
            return len(list(tb_module.walk_tb(exc.__traceback__)))
        raise AssertionError("result() did not raise")

    # When it is polled many times
    first = frames()
    for _ in range(200):
        frames()
    # Then its error carries the frames of one raise, not of every raise so far
    assert frames() == first
    assert call.exception(0) is not None and frames() == first


def test_an_instance_runs_a_module_level_task_it_sends(memory_url: str) -> None:
    # Given a task registered on the module (ivy.default), as `@ivy.register_task` does, and
    # an instance of one's own, as a test fixture makes it (issue 21, friction 1)
    name = f"module.add{uuid.uuid4().hex[:8]}"

    @ivy.register_task(name=name)
    def add(a: int, b: int) -> int:
        return a + b

    app = ivy.Ivy(memory_url, memory_url)
    try:
        app.listen(block=False)
        # When the instance sends it
        call = app.delayed_call(add, 1, 2)
        # Then its own worker runs it, instead of dead-lettering an unknown task
        assert call.result(20) == 3
        assert app.registry.get(name) is add
    finally:
        app.close()
        ivy.default.registry._tasks.pop(name, None)
