"""The worker on its own: results that cannot travel, the event loop's end, per-task leases from
its context, what worker.py and its parts may import, max_messages and stopping. The contract
suite (tests/support/contract.py) holds the worker tests that run on every queue backend."""

from __future__ import annotations

import ast
import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
from common import ROOT, wait_for

import ivy
from ivy.queues.sqlite import SQLiteQueueBackend
from ivy.worker import Worker, WorkerContext


def start(app: ivy.Ivy, queue: str = "q", concurrency: int = 2) -> ivy.Worker:
    return app.listen(queue=queue, concurrency=concurrency, block=False)


# -- results the producer would drop ------------------------------------------------------------


def test_oversized_result_fails_the_call_at_once(app: ivy.Ivy) -> None:
    # Given a task returning 3 MiB, over max_message_bytes (1 MiB), with retries
    runs: list[int] = []

    @app.register_task(name="t.big", queue="q", retry=True, max_retries=2)
    def big() -> str:
        runs.append(1)
        return "x" * (3 << 20)

    start(app)
    # When it is called, Then the call fails with ResultTooLarge instead of waiting for its
    # timeout
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call(big).result(30)
    assert exc.value.type == "ResultTooLarge"
    assert "'t.big'" in exc.value.message
    assert "over the limit of 1048576 bytes" in exc.value.message
    assert "return a reference" in exc.value.message
    # and the message was acknowledged, not retried
    wait_for(lambda: app.queue_backend.size("q") == 0, message="the ack")
    assert runs == [1]
    assert app.queue_backend.dead_letters("q") == []


def test_result_nested_too_deeply_fails_the_call(app: ivy.Ivy) -> None:
    @app.register_task(name="t.deep", queue="q")
    def deep(levels: int) -> list[object]:
        value: list[object] = []
        for _ in range(levels - 1):
            value = [value]
        return value

    start(app)
    # a result at the limit travels; one level more does not
    limit = app.max_depth
    assert app.delayed_call(deep, limit).result(30) is not None
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call(deep, limit + 1).result(30)
    assert exc.value.type == "ResultTooDeep"
    assert f"deeper than {limit} levels" in exc.value.message


def test_oversized_error_is_shortened_to_travel(app: ivy.Ivy) -> None:
    # a queue of its own: a worker of an earlier test still on "q" would refuse t.loud
    queue = f"q-loud-{uuid.uuid4().hex[:8]}"

    @app.register_task(name="t.loud", queue=queue)
    def loud() -> None:
        raise ValueError("start " + "x" * (3 << 20) + " end")

    start(app, queue)
    with pytest.raises(ivy.RemoteTaskError) as exc:
        app.delayed_call(loud).result(30)
    assert exc.value.type == "ValueError"
    assert exc.value.message.startswith("start x") and exc.value.message.endswith("x end")
    assert "characters left out" in exc.value.message
    assert len(exc.value.message) < 10_000


# -- the event loop of async tasks ----------------------------------------------------------


def test_event_loop_is_closed_when_the_worker_stops(memory_url: str) -> None:
    # Given a worker that ran an async task, which left a background task running
    app = ivy.Ivy(memory_url, memory_url)
    loops: list[asyncio.AbstractEventLoop] = []
    background_ended = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            background_ended.set()

    keep: list[asyncio.Task[None]] = []

    @app.register_task(name="t.loop", queue="q")
    async def uses_loop() -> str:
        loops.append(asyncio.get_running_loop())
        keep.append(asyncio.get_running_loop().create_task(forever()))
        return "ok"

    worker = start(app)
    assert app.delayed_call(uses_loop).result(10) == "ok"
    # When the worker stops
    worker.stop(10)
    # Then its loop is closed, the background task was cancelled first
    assert loops[0].is_closed()
    assert background_ended.is_set()
    app.close()


# -- the worker's context ---------------------------------------------------------------------


def test_reserve_times_override_the_task_and_the_worker(tmp_path: Path) -> None:
    # Given a worker whose own reservation is 1 s, a task that asks for 2 s, and a context that
    # gives that task 60 s (the original's listen({"messages": {name: {"reserveTime": ...}}}))
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    app = ivy.Ivy(url, url)
    started, go_on = threading.Event(), threading.Event()

    @app.register_task(name="t.long", queue="q", reserve_time=2.0)
    def long() -> str:
        started.set()
        go_on.wait(30)
        return "done"

    backend = app.queue_backend
    assert isinstance(backend, SQLiteQueueBackend)
    context = app.worker_context({"t.long": 60.0})
    assert context.reserve_times == {"t.long": 60.0}
    worker = Worker(context, backend, app.start_notification_producer(), ["q"],
                    reserve_time=1.0).start()
    try:
        call = app.delayed_call(long)
        assert started.wait(10)
        # When it runs, Then its message is reserved for the context's 60 s
        wait_for(lambda: lease_left(backend) > 30, message="a lease of the context's 60 s")
        assert worker.lease(app.registry.resolve("t.long")) == 60.0
        go_on.set()
        assert call.result(10) == "done"
    finally:
        go_on.set()
        worker.stop(10)
        app.close()


def lease_left(backend: SQLiteQueueBackend) -> float:
    """Seconds until the reservation of the one message in queue ``q`` runs out."""
    row = backend.db.conn().execute(
        "SELECT available_at FROM ivy_messages WHERE queue = 'q'").fetchone()
    return 0.0 if row is None else float(row[0]) - time.time()


def test_worker_context_is_frozen_and_copies_reserve_times() -> None:
    app = ivy.Ivy("memory://ctx", "memory://ctx")
    times = {"a.b": 5.0}
    context = app.worker_context(times)
    times["a.b"] = 1.0
    assert context.reserve_times["a.b"] == 5.0
    assert context.registry is app.registry
    with pytest.raises(AttributeError):
        context.max_depth = 3  # type: ignore[misc]
    assert isinstance(context, WorkerContext)
    app.close()


def imports(module: str) -> set[str | None]:
    tree = ast.parse((ROOT / "ivy" / "worker" / f"{module}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return imported | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                       for alias in node.names}


def test_worker_module_does_not_import_the_app() -> None:
    imported = imports("core")
    assert "ivy.app" not in imported and "ivy" not in imported


@pytest.mark.parametrize("module", ["execution", "outcomes", "settle"])
def test_the_workers_parts_do_not_import_the_layers_above(module: str) -> None:
    # execution, outcomes and settle sit below the worker, which sits below the app
    assert not imports(module) & {"ivy", "ivy.app", "ivy.worker", "ivy.worker.core"}


def test_names_moved_out_of_the_worker_module_are_still_importable_from_it() -> None:
    import ivy.worker as worker
    from ivy.worker import execution, outcomes

    assert worker.error_info is execution.error_info
    assert worker.LOOP_CLOSE_TIMEOUT == execution.LOOP_CLOSE_TIMEOUT
    assert worker.RECORD_ATTEMPTS == outcomes.RECORD_ATTEMPTS
    assert worker.ERROR_MESSAGE_CHARS == outcomes.ERROR_MESSAGE_CHARS
    assert worker.ERROR_TRACEBACK_CHARS == outcomes.ERROR_TRACEBACK_CHARS


def test_listen_honours_the_originals_messages_reserve_time(tmp_path: Path) -> None:
    # Given the original's listen dict with a per-task reserveTime of an hour
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    app = ivy.Ivy(url, url)
    started, go_on = threading.Event(), threading.Event()

    @app.register_task(name="testpackage.long", queue="q")
    def long() -> str:
        started.set()
        go_on.wait(30)
        return "done"

    worker = app.listen({"type": "sqlite", "path": str(tmp_path / "ivy.db"), "queue": "q",
                         "messages": {"testpackage.long": {"reserveTime": 60 * 60}}},
                        reserve_time=1.0, block=False)
    try:
        call = app.delayed_call(long)
        assert started.wait(10)
        # Then while it runs its message is reserved for the hour, not the worker's 1 s
        backend = worker.backend
        assert isinstance(backend, SQLiteQueueBackend)
        wait_for(lambda: lease_left(backend) > 1800, message="a lease of reserveTime")
        go_on.set()
        assert call.result(10) == "done"
    finally:
        go_on.set()
        app.close()


# -- max_messages, stopping -------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_max_messages_runs_that_many_then_stops(sqlite_url: str, concurrency: int) -> None:
    # Given 5 calls waiting in a queue
    app = ivy.Ivy(sqlite_url, sqlite_url)
    runs: list[int] = []

    @app.register_task(name="t.count", queue="q")
    def count(n: int) -> int:
        runs.append(n)
        return n

    calls = [app.delayed_call(count, n) for n in range(5)]
    app.flush(10)
    backend = app.queue_backend
    assert backend.size("q") == 5
    # When a worker that may run 2 messages starts (with 3 threads, the third one's fetch is
    # refused and given back)
    worker = Worker(app.worker_context(), backend, app.start_notification_producer(), ["q"],
                    concurrency=concurrency, max_messages=2).start()
    second = None
    try:
        # Then it stops by itself once it ran exactly 2
        assert worker.join(10), "the worker did not stop after its 2 messages"
        assert len(runs) == 2 and worker.admitted == 2 and worker.full
        assert not worker.running
        # and the other 3 are back in the queue, unstarted: a second worker runs each once
        assert backend.size("q") == 3
        second = app.listen(queue="q", block=False)
        assert sorted(call.result(10) for call in calls) == [0, 1, 2, 3, 4]
        assert sorted(runs) == [0, 1, 2, 3, 4]
        assert backend.dead_letters("q") == []
    finally:
        worker.stop(10)
        if second is not None:
            second.stop(10)
        app.close()


def test_max_messages_must_be_positive(memory_url: str) -> None:
    app = ivy.Ivy(memory_url, memory_url)
    with pytest.raises(ValueError, match="max_messages 0 must be at least 1"):
        Worker(app.worker_context(), app.queue_backend, None, ["q"], max_messages=0)
    app.close()


class WatchedLock:
    """A lock that records the name of each thread that asks for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.asked: list[str] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.asked.append(threading.current_thread().name)
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_two_threads_stopping_at_once_close_the_consumers_once(memory_url: str) -> None:
    # Given a running worker whose consumer counts its closes, with a lock the test can hold
    app = ivy.Ivy(memory_url, memory_url)
    worker = Worker(app.worker_context(), app.queue_backend, app.start_notification_producer(),
                    ["q"])
    lock = WatchedLock()
    worker._lock, worker._idle = lock, threading.Condition(lock)  # type: ignore[assignment]
    worker.start()
    consumer = worker._consumers[0]
    closes: list[str] = []
    close = consumer.close

    def counting_close() -> None:
        closes.append(threading.current_thread().name)
        close()

    consumer.close = counting_close  # type: ignore[method-assign]
    try:
        # When two threads call stop() at once: both reach the worker's lock before either
        # gets it
        stoppers = [threading.Thread(target=worker.stop, args=(10,), name=f"stopper-{i}")
                    for i in (1, 2)]
        with lock:
            for thread in stoppers:
                thread.start()
            wait_for(lambda: {"stopper-1", "stopper-2"} <= set(lock.asked),
                     message="both stop() calls to wait for the lock")
        for thread in stoppers:
            thread.join(10)
        # Then one of them closed the consumer, once, and both returned with the worker stopped
        assert len(closes) == 1, closes
        assert not any(thread.is_alive() for thread in stoppers)
        assert not worker.running and worker.join(0)
    finally:
        worker.stop(10)
        app.close()


def test_fewer_executors_than_queues_serve_every_queue(app: ivy.Ivy) -> None:
    # Given a worker with one executor thread on two queues, one of them always empty
    @app.register_task(name="wq.add", queue="qb")
    def add(a: int, b: int) -> int:
        return a + b

    worker = app.listen(queue=["qa", "qb"], concurrency=1, block=False)
    assert worker.running
    # When calls arrive on the other queue
    calls = [app.delayed_call(add, i, 1) for i in range(10)]
    # Then they all run promptly: the fetcher waiting on the empty queue holds no executor
    # (it did, and 1 call in 10 ran in 20 s)
    assert app.wait(calls, timeout=15) == [i + 1 for i in range(10)]
    # and a graceful stop gives back what a fetcher still held, losing nothing
    worker.stop(10)
    assert worker.wait_stopped(10)


@pytest.mark.parametrize("interval", [0, -1, "5", float("nan"), True])
def test_a_bad_heartbeat_is_refused_before_any_task_runs(sqlite_url: str,
                                                         interval: object) -> None:
    # Given a queued call (issue 20, row 16)
    app = ivy.Ivy(sqlite_url, sqlite_url)
    ran: list[int] = []
    app.register_task(ran.append, name="w.record", queue="qh")
    app.delayed_call("w.record", 1)
    app.flush(10)
    try:
        # When a worker is asked for with a bad heartbeat interval
        with pytest.raises(ValueError, match="heartbeat interval"):
            app.listen(queue="qh", block=False, heartbeat=interval)  # type: ignore[arg-type]
        # Then it refuses before taking work: the call is still queued, nothing ran
        assert list(app._workers) == [] and ran == []
        assert app.queue_backend.size("qh") == 1
    finally:
        app.close()
