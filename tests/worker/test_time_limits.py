"""Hard time limits (issue 26, part 1): a time-limited call runs in a runner process that the
worker kills past the limit; the call fails with TaskTimeout or is retried by its policy, and
the next call runs in a fresh process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks_for_workers as tasks
from common import wait_for

import ivy


@pytest.fixture
def app(sqlite_url: str) -> Iterator[ivy.Ivy]:
    instance = ivy.Ivy(sqlite_url, sqlite_url, retry_base_delay=0.01, retry_max_delay=0.05)
    for task in (tasks.stuck, tasks.pid, tasks.retried, tasks.progress, tasks.async_blocked,
                 tasks.dies, tasks.soft, tasks.plain, tasks.leaks):
        instance.registry.add(task)
    yield instance
    instance.close()


def remote_error(call: ivy.Call[Any], timeout: float = 20) -> ivy.RemoteTaskError:
    with pytest.raises(ivy.RemoteTaskError) as caught:
        call.result(timeout)
    return caught.value


def test_a_stuck_task_is_killed_and_the_next_call_runs_in_a_fresh_process(
        app: ivy.Ivy, tmp_path: Path) -> None:
    # Given a worker of two threads, and a task blocked in one C call with time_limit=2
    app.listen(queue="limit", concurrency=2, block=False)
    started = tmp_path / "started"
    call = app.delayed_call(tasks.stuck, 600, str(started))
    # Then it fails with TaskTimeout (not after 600 s)
    error = remote_error(call)
    assert error.type == "TaskTimeout" and "time limit of 2 s" in error.message
    killed = int(started.read_text())
    assert not alive(killed)
    # and the next call runs in a fresh process, neither the killed one nor the worker's
    fresh = app.delayed_call(tasks.pid).result(20)
    assert fresh not in (killed, os.getpid())


def test_a_timed_out_call_is_retried_when_its_policy_says_so(app: ivy.Ivy,
                                                               tmp_path: Path) -> None:
    app.listen(queue="limit", block=False)
    log = tmp_path / "runs"
    assert app.delayed_call(tasks.retried, str(log)).result(30) == 2
    first, second = (int(p) for p in log.read_text().split())
    assert first != second  # the retry ran in a new process


def test_an_async_task_blocking_its_loop_is_killed(app: ivy.Ivy) -> None:
    app.listen(queue="limit", block=False)
    assert remote_error(app.delayed_call(tasks.async_blocked)).type == "TaskTimeout"
    assert app.delayed_call(tasks.pid).result(20) != os.getpid()


def test_progress_and_the_context_reach_across_the_process(app: ivy.Ivy) -> None:
    app.listen(queue="limit", block=False)
    call = app.delayed_call(tasks.progress)
    updates: list[ivy.Progress] = []
    call.on_progress(updates.append)
    assert call.result(20) == "limit.progress attempt 0"
    wait_for(lambda: updates == [ivy.Progress(0.5, "half way")], message="the progress")


def test_a_runner_that_dies_fails_its_call_and_the_worker_goes_on(app: ivy.Ivy) -> None:
    app.listen(queue="limit", block=False)
    error = remote_error(app.delayed_call(tasks.dies))
    assert error.type == "WorkerLost" and "exited with status 7" in error.message
    assert app.delayed_call(tasks.pid).result(20) != os.getpid()


def test_the_soft_timeout_still_works_inside_a_runner(app: ivy.Ivy) -> None:
    app.listen(queue="limit", block=False)
    error = remote_error(app.delayed_call(tasks.soft))
    assert error.type == "TimeoutError" and "timeout of 0.3 s" in error.message


def test_the_workers_default_limit_applies_to_tasks_without_their_own(
        app: ivy.Ivy) -> None:
    app.listen(queue="limit", block=False, time_limit=1)
    assert remote_error(app.delayed_call(tasks.plain, 600)).type == "TaskTimeout"
    assert app.delayed_call(tasks.plain, 0).result(20) != os.getpid()


def test_a_cancel_kills_the_runner_of_a_running_call(app: ivy.Ivy, tmp_path: Path) -> None:
    app.listen(queue="limit", block=False)
    started = tmp_path / "started"
    call = app.delayed_call(tasks.stuck, 600, str(started))
    wait_for(started.exists, timeout=20, message="the call to start")
    app.cancel(call)
    with pytest.raises(ivy.CallCancelled):
        call.result(20)
    wait_for(lambda: not alive(int(started.read_text())), message="its process killed")


def test_a_runner_past_the_workers_memory_limit_is_replaced(app: ivy.Ivy) -> None:
    # Given a worker whose processes may grow to 150 MB more than this one now (a runner
    # starts far below that), running a time-limited task in its runner
    from ivy.worker.recycling import MB, rss_bytes

    limit = rss_bytes() / MB + 150
    app.listen(queue="limit", block=False, max_memory=limit)
    # When calls keep no memory, they run in the same runner, one after the other
    first = app.delayed_call(tasks.leaks, 0).result(20)
    assert app.delayed_call(tasks.leaks, 0).result(20) == first != os.getpid()
    # and when one leaves its runner past the limit, the next call runs in a fresh one
    leaky = app.delayed_call(tasks.leaks, int(limit) + 50).result(30)
    assert leaky == first
    fresh = app.delayed_call(tasks.leaks, 0).result(20)
    assert fresh not in (first, os.getpid())
    # while the worker itself, below its limit, goes on
    assert app.delayed_call(tasks.pid).result(20) == fresh


def test_a_time_limited_task_must_be_importable(sqlite_url: str) -> None:
    app = ivy.Ivy(sqlite_url, sqlite_url)
    try:
        @app.register_task(name="local.limited", queue="q", time_limit=5)
        def limited() -> None:
            pass

        with pytest.raises(ivy.ConfigurationError, match=r"'local\.limited'.*inside a function"):
            app.listen(queue="q", block=False)
    finally:
        app.close()


@pytest.mark.parametrize("value", [0, -1, "soon", True])
def test_time_limit_must_be_seconds(value: Any) -> None:
    with pytest.raises(ivy.ConfigurationError, match="time_limit"):
        ivy.Ivy("memory://x").register_task(lambda: None, name="t", time_limit=value)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def test_threads_are_not_lost_to_stuck_calls(app: ivy.Ivy, tmp_path: Path) -> None:
    # a worker of one thread: a stuck call would take its only thread for good without a
    # hard limit; with one, the calls after it still run
    app.listen(queue="limit", concurrency=1, block=False)
    stuck = [app.delayed_call(tasks.stuck, 600, str(tmp_path / f"s{i}")) for i in range(2)]
    after = app.delayed_call(tasks.pid)
    assert all(remote_error(c, 30).type == "TaskTimeout" for c in stuck)
    assert after.result(20) != os.getpid()
    assert threading.active_count() < 100
