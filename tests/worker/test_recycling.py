"""Memory recycling (issue 26, part 2): a worker past ``max_memory`` MB of RSS admits no more,
finishes what runs, gives back what it fetched, and stops to be replaced; ``ivy worker
--max-memory-per-child`` replaces its process without backoff."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.worker import Worker
from ivy.worker.recycling import MB, Recycling, rss_bytes

#: what the leaky task keeps, so that the process's RSS grows and stays grown
_kept: list[bytearray] = []


def leak(mb: int) -> None:
    block = bytearray(mb * MB)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just mapped
    _kept.append(block)


@pytest.fixture(autouse=True)
def free_the_leak() -> Any:
    yield
    _kept.clear()


def limit_above_now(mb: int) -> float:
    return rss_bytes() / MB + mb


def test_a_worker_past_its_memory_finishes_then_stops_and_gives_the_rest_back(
        sqlite_url: str) -> None:
    # Given 6 calls waiting, and a worker whose limit is 40 MB above its RSS now
    app = ivy.Ivy(sqlite_url, sqlite_url)
    runs: list[int] = []

    @app.register_task(name="t.leaky", queue="q")
    def leaky(n: int) -> int:
        runs.append(n)
        leak(60)  # past the limit after the first call
        return n

    calls = [app.delayed_call(leaky, n) for n in range(6)]
    app.flush(10)
    worker = Worker(app.worker_context(), app.queue_backend, app.start_notification_producer(),
                    ["q"], concurrency=1, max_memory=limit_above_now(40)).start()
    second = None
    try:
        # Then it stops by itself after the call that passed the limit
        assert worker.join(20), "the worker did not stop past its memory limit"
        assert worker.full and runs == [0]
        assert worker.recycling.reason is not None
        assert "passed max_memory" in worker.recycling.reason
        # and the other calls are back in the queue, unstarted, for the next worker
        assert app.queue_backend.size("q") == 5
        _kept.clear()
        second = app.listen(queue="q", block=False)
        assert sorted(c.result(20) for c in calls) == [0, 1, 2, 3, 4, 5]
        assert app.queue_backend.dead_letters("q") == []
    finally:
        worker.stop(10)
        if second is not None:
            second.stop(10)
        app.close()


def test_the_heartbeat_sees_a_task_that_grows_while_it_runs(sqlite_url: str) -> None:
    # Given a worker whose running task leaks past the limit and then waits
    app = ivy.Ivy(sqlite_url, sqlite_url)
    grown, go_on = threading.Event(), threading.Event()

    @app.register_task(name="t.grows", queue="q")
    def grows() -> str:
        leak(60)
        grown.set()
        assert go_on.wait(20)
        return "done"

    worker = Worker(app.worker_context(), app.queue_backend, app.start_notification_producer(),
                    ["q"], concurrency=2, max_memory=limit_above_now(40)).start()
    try:
        call = app.delayed_call(grows)
        assert grown.wait(20)
        # Then, while it still runs, the worker admits no more (the heartbeat looked)
        wait_for(lambda: worker.full, timeout=10, message="the heartbeat's memory check")
        later = app.delayed_call(grows)
        assert worker.running  # it still runs its task
        go_on.set()
        # and once that task ended, the worker stops; the later call waits for another
        assert call.result(20) == "done"
        assert worker.join(20)
        assert not later.done()
        # the later call is back on the queue (its hand-back is written in the background)
        wait_for(lambda: app.queue_backend.size("q") == 1, timeout=10,
                 message="the later call to wait on the queue")
    finally:
        go_on.set()
        worker.stop(10)
        app.close()


@pytest.mark.parametrize("value", [0, -5, "lots", True])
def test_max_memory_must_be_a_positive_number_of_mb(value: Any) -> None:
    with pytest.raises(ValueError, match="must be a number of MB > 0"):
        Recycling(max_memory=value)


def test_rss_is_read_and_grows_with_what_the_process_keeps() -> None:
    before = rss_bytes()
    leak(50)
    assert rss_bytes() >= before + 40 * MB
