"""Cancel: ``call.cancel()`` and ``ivy.cancel(call_id)`` on every backend pairing (memory,
SQLite, RabbitMQ + Redis), and across worker processes on SQLite."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
from common import wait_for

import ivy


@pytest.fixture
def urls(store_urls: tuple[str, str]) -> tuple[str, str]:
    """These features keep state in the notifier: every pairing but RabbitMQ alone, whose
    notifier refuses them (tests/notifiers/test_amqp_notifier.py)."""
    return store_urls


def register(app: ivy.Ivy) -> tuple[str, dict[str, list[str]]]:
    """Tasks on a queue of their own; ``seen`` records what ran and how it ended."""
    queue = f"qc{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[str]] = {"ran": [], "started": [], "ended": []}

    @app.register_task(name="c.add", queue=queue)
    def add(a: int, b: int) -> int:
        seen["ran"].append(f"{a}+{b}")
        return a + b

    @app.register_task(name="c.spin", queue=queue)
    def spin(tag: str) -> str:
        seen["started"].append(tag)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.005)
        except ivy.TaskCancelled:
            seen["ended"].append(f"{tag}:TaskCancelled")
            raise
        return "finished"

    @app.register_task(name="c.block", queue=queue, max_retries=3)
    def block(tag: str) -> str:
        seen["started"].append(tag)
        try:
            for _ in range(30):
                time.sleep(1.0)  # one C call: the cancel lands when it returns
        except ivy.TaskCancelled:
            seen["ended"].append(f"{tag}:TaskCancelled")
            raise
        return "finished"

    @app.register_task(name="c.aspin", queue=queue)
    async def aspin(tag: str) -> str:
        seen["started"].append(tag)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen["ended"].append(f"{tag}:CancelledError")
            raise
        return "finished"

    return queue, seen


def test_a_queued_call_never_runs(app: ivy.Ivy) -> None:
    # Given a call sent while no worker listens
    queue, seen = register(app)
    call = app.delayed_call("c.add", 1, 2)
    call.sent(10)
    # When it is cancelled
    call.cancel()
    # Then it settles at once as cancelled
    with pytest.raises(ivy.CallCancelled) as info:
        call.result(10)
    assert call.status == "cancelled"
    assert info.value.type == "CallCancelled" and call.id in info.value.message
    assert isinstance(info.value, ivy.RemoteTaskError)
    # And a worker that starts later acknowledges it without running it
    worker = app.listen(queue=queue, block=False)
    after = app.delayed_call("c.add", 2, 3)
    assert after.result(20) == 5
    wait_for(lambda: worker.processed >= 2, message="both messages processed")
    assert seen["ran"] == ["2+3"]
    wait_for(lambda: app.queue_backend.size(queue) == 0, message="the queue to empty")


def test_another_producer_cancels_by_id(app: ivy.Ivy, urls: tuple[str, str]) -> None:
    # Given a queued call of producer A
    queue, seen = register(app)
    call = app.delayed_call("c.add", 1, 1)
    call.sent(10)
    # When producer B, which never saw the call, cancels it by id
    with ivy.Ivy(*urls) as other:
        other.cancel(call.id)
    # Then the worker does not run it, and tells A the call was cancelled
    app.listen(queue=queue, block=False)
    with pytest.raises(ivy.CallCancelled, match="before it ran"):
        call.result(20)
    assert seen["ran"] == []


@pytest.mark.parametrize("task", ["c.spin", "c.aspin", "c.block"])
def test_a_running_call_is_stopped(app: ivy.Ivy, urls: tuple[str, str], task: str) -> None:
    # Given a call running on a worker (a plain function, a coroutine)
    queue, seen = register(app)
    worker = app.listen(queue=queue, block=False)
    call = app.delayed_call(task, "one")
    wait_for(lambda: seen["started"] == ["one"], message="the task to start")
    # When another producer cancels it
    with ivy.Ivy(*urls) as other:
        other.cancel(call.id)
    # Then the task is stopped inside, and the call is cancelled
    with pytest.raises(ivy.CallCancelled, match="while it ran"):
        call.result(20)
    expected = "one:CancelledError" if task == "c.aspin" else "one:TaskCancelled"
    wait_for(lambda: seen["ended"] == [expected], message="the task to be stopped")
    # And the worker keeps working, its message acknowledged (not retried)
    assert app.delayed_call("c.add", 4, 4).result(20) == 8
    wait_for(lambda: app.queue_backend.size(queue) == 0, message="the queue to empty")
    assert worker.running and seen["started"] == ["one"]


def test_the_producer_s_own_cancel_of_a_running_call(app: ivy.Ivy) -> None:
    queue, seen = register(app)
    app.listen(queue=queue, block=False)
    call = app.delayed_call("c.spin", "mine")
    wait_for(lambda: seen["started"] == ["mine"], message="the task to start")
    ivy_cancelled = threading.Event()
    call.add_done_callback(lambda c: ivy_cancelled.set())
    app.cancel(call)  # settles at once
    with pytest.raises(ivy.CallCancelled):
        call.result(5)
    assert ivy_cancelled.is_set()
    wait_for(lambda: seen["ended"] == ["mine:TaskCancelled"], message="the task to stop")


def test_cancel_after_the_result_changes_nothing(app: ivy.Ivy) -> None:
    queue, _ = register(app)
    app.listen(queue=queue, block=False)
    call = app.delayed_call("c.add", 20, 22)
    assert call.result(20) == 42
    call.cancel()
    assert call.result(1) == 42 and call.status == "done"


def test_a_bad_call_id_is_refused(app: ivy.Ivy) -> None:
    with pytest.raises(ValueError, match="call id 42"):
        app.cancel(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        app.cancel("abc", ttl=-1)


@pytest.mark.slow
def test_worker_processes_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    """Two worker processes: a running call is stopped in whichever process runs it, a
    queued one never runs, and cancels made before a worker starts are kept."""
    from timing_workers import producer, start
    from workers import stop_worker

    app = producer(sqlite_url, sqlite_url)
    marker = tmp_path / "spin"
    queued_log = tmp_path / "queued.log"
    # Given a call cancelled before any worker started
    early = app.delayed_call("timing.stamp", str(queued_log), 1)
    early.sent(10)
    with ivy.Ivy(sqlite_url, sqlite_url) as other:
        other.cancel(early.id)
    workers = [start("worker", sqlite_url, sqlite_url, "--concurrency", "2")
               for _ in range(2)]
    try:
        # When a running call is cancelled by id from another producer
        call = app.delayed_call("timing.spin", str(marker))
        wait_for(lambda: marker.exists() and marker.read_text() == "started", timeout=30,
                 message="the task to start in a worker process")
        with ivy.Ivy(sqlite_url, sqlite_url) as other:
            other.cancel(call.id)
        # Then it is stopped inside the task, and both calls are cancelled
        with pytest.raises(ivy.CallCancelled, match="while it ran"):
            call.result(30)
        with pytest.raises(ivy.CallCancelled, match="before it ran"):
            early.result(30)
        wait_for(lambda: marker.read_text().startswith("cancelled in"), timeout=10,
                 message="the task to see TaskCancelled")
        assert not queued_log.exists()
        assert app.delayed_call("timing.stamp", str(queued_log), 2).result(30) == 2
    finally:
        for w in workers:
            stop_worker(w)
        app.close()


def test_a_running_worker_sees_a_new_cancel(app: ivy.Ivy) -> None:
    # Given a worker that has seen no cancel yet, and a call due in a second
    queue, seen = register(app)
    worker = app.listen(queue=queue, block=False)
    assert app.delayed_call("c.add", 0, 0).result(20) == 0
    call = app.send_task("c.add", [1, 2], delay=1)
    # When it is cancelled while it waits
    call.cancel()
    # Then the worker acknowledges it when it comes due, without running it
    wait_for(lambda: worker.processed >= 2, timeout=20, message="the call to come due")
    wait_for(lambda: app.queue_backend.size(queue) == 0, message="the queue to empty")
    assert seen["ran"] == ["0+0"]


def test_the_cancel_command(sqlite_url: str) -> None:
    import subprocess
    import sys

    from common import SUPPORT_DIR

    app = ivy.Ivy(sqlite_url, sqlite_url)
    try:
        queue, seen = register(app)
        call = app.delayed_call("c.add", 2, 2)
        call.sent(10)
        out = subprocess.run([sys.executable, "-m", "ivy", "cancel", call.id,
                              "--notifier-url", sqlite_url], cwd=SUPPORT_DIR,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"cancelled {call.id}"
        app.listen(queue=queue, block=False)
        with pytest.raises(ivy.CallCancelled):
            call.result(20)
        assert seen["ran"] == []
    finally:
        app.close()


def test_cancelling_a_workflow_stops_its_steps(app: ivy.Ivy, urls: tuple[str, str]) -> None:
    # Given a chain whose first step runs on a worker
    queue, seen = register(app)
    app.listen(queue=queue, concurrency=2, block=False)
    spin, add = app.registry.get("c.spin"), app.registry.get("c.add")
    assert spin is not None and add is not None
    call = app.delayed_call(ivy.chain(spin.s("step1"), add.s(1)))
    wait_for(lambda: seen["started"] == ["step1"], message="the first step to start")
    # When another producer cancels the workflow's call by id
    with ivy.Ivy(*urls) as other:
        other.cancel(call.id)
    # Then the running step is stopped, the workflow is cancelled, the next step never runs
    with pytest.raises(ivy.CallCancelled):
        call.result(20)
    wait_for(lambda: seen["ended"] == ["step1:TaskCancelled"], message="the step to stop")
    wait_for(lambda: app.queue_backend.size(queue) == 0, message="the queue to empty")
    assert seen["ran"] == []


def test_a_cancel_that_comes_after_the_call_returned_keeps_its_value() -> None:
    # Given a plain function that returns, and a cancel of it raised in its thread just as
    # the executor takes the call off its list (issue 20, row 12): the lock is where the
    # thread is when a cancel lands between the return and the clearing of pending cancels
    from ivy.message import Message, new_id
    from ivy.task import Task
    from ivy.worker.execution import Executor, TaskCancelled, _raise_in_thread

    executor = Executor("test")
    call_id = new_id()
    armed = threading.Event()

    class LateCancelLock:
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def __enter__(self) -> None:
            self._lock.acquire()
            try:
                if armed.is_set():
                    armed.clear()
                    running = executor._running[call_id]
                    running.cancelled = True
                    _raise_in_thread(running.thread_id, TaskCancelled)
                    for _ in range(100):  # it is raised at one of the next bytecodes
                        pass
            except BaseException:
                self._lock.release()
                raise

        def __exit__(self, *exc: object) -> None:
            self._lock.release()

    executor._lock = LateCancelLock()  # type: ignore[assignment]

    def answer() -> int:
        armed.set()
        return 42

    task: Task[[], int] = Task(answer, name="c.answer")
    # When it runs
    outcome = executor.run(task, Message(call_id, "c.answer", []))
    # Then its value is kept: the call succeeded, nothing escapes, nothing is retried
    assert outcome == (True, 42)
    assert call_id not in executor._running
