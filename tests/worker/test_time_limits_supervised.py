"""Hard time limits in ``ivy worker`` (issue 26, part 1): the worker runs under a supervisor,
its time-limited calls run inline, and a call past its limit ends the worker process, which the
supervisor replaces (ivy.worker.limits). The in-process form (``app.listen()``, runner
processes) is in test_time_limits.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks_for_workers as tasks
from common import wait_for
from test_time_limits import alive, remote_error
from workers import WorkerProcess, launch, stop_worker, wait_listening

import ivy
from ivy.worker import limits


@pytest.fixture
def app(sqlite_url: str) -> Iterator[ivy.Ivy]:
    instance = ivy.Ivy(sqlite_url, sqlite_url)
    for task in (tasks.stuck, tasks.pid, tasks.retried, tasks.plain, tasks.holds_gil,
                 tasks.progress):
        instance.registry.add(task)
    yield instance
    instance.close()


def worker(sqlite_url: str, *extra: str) -> WorkerProcess:
    """``ivy worker tasks_for_workers --queue limit`` on ``sqlite_url``, once it listens."""
    return launch(["worker", "tasks_for_workers", "--queue", "limit", "--queue-url", sqlite_url,
                   "--notifier-url", sqlite_url, *extra])


def test_a_stuck_call_fails_within_5_s_and_the_next_runs_on_a_fresh_process(
        app: ivy.Ivy, sqlite_url: str, tmp_path: Path) -> None:
    # Given `ivy worker` on a module whose tasks declare time limits: a supervisor and its
    # worker process (no --processes needed)
    sup = worker(sqlite_url)
    try:
        first = app.delayed_call(tasks.pid).result(20)
        assert first != sup.pid
        # When a call blocks in one C call past its time_limit=2
        began = time.monotonic()
        error = remote_error(app.delayed_call(tasks.stuck, 600, str(tmp_path / "started")))
        # Then it fails with TaskTimeout within 5 s, in the process that ran the others
        assert time.monotonic() - began < 5
        assert error.type == "TaskTimeout" and "time limit of 2 s" in error.message
        assert int((tmp_path / "started").read_text()) == first
        # and the next call runs on a fresh process, the old one gone
        fresh = app.delayed_call(tasks.pid).result(20)
        assert fresh not in (first, sup.pid)
        wait_for(lambda: not alive(first), message="the old worker process to end")
        assert "ended after a call passed its time limit" in "".join(sup.lines)
    finally:
        stop_worker(sup)


def test_the_other_calls_of_the_process_are_handed_back_at_once(
        app: ivy.Ivy, sqlite_url: str, tmp_path: Path) -> None:
    # Given a worker process of two threads, with a reservation far longer than the test
    sup = worker(sqlite_url, "--concurrency", "2", "--reserve-time", "300")
    try:
        # running a call of 3 s next to one that gets stuck
        other = app.delayed_call(tasks.plain, 3)
        stuck = app.delayed_call(tasks.stuck, 600, str(tmp_path / "started"))
        began = time.monotonic()
        assert remote_error(stuck).type == "TaskTimeout"
        # Then the other call was handed back, not left to its 300 s reservation: it runs
        # again, to its end, on the fresh process
        fresh = other.result(30)
        assert time.monotonic() - began < 30
        assert fresh != int((tmp_path / "started").read_text())
        assert f"[{other.id}]" in "".join(sup.lines)  # the log names the calls handed back
    finally:
        stop_worker(sup)


def test_a_timed_out_call_is_retried_on_a_fresh_process_when_its_policy_says_so(
        app: ivy.Ivy, sqlite_url: str, tmp_path: Path) -> None:
    sup = worker(sqlite_url)
    try:
        runs = tmp_path / "runs"
        assert app.delayed_call(tasks.retried, str(runs)).result(30) == 2
        first, second = (int(p) for p in runs.read_text().split())
        assert first != second
    finally:
        stop_worker(sup)


def test_a_call_holding_the_gil_is_killed_by_the_supervisor(
        app: ivy.Ivy, sqlite_url: str, tmp_path: Path) -> None:
    # Given a call in a C function that never releases the GIL, past its time_limit=1: the
    # worker process's own watch cannot run
    sup = worker(sqlite_url)
    try:
        started = tmp_path / "started"
        app.delayed_call(tasks.holds_gil, str(started))
        wait_for(started.exists, timeout=20, message="the call to start")
        held_by = int(started.read_text())
        began = time.monotonic()
        # Then the supervisor kills its process GRACE s past the limit
        wait_for(lambda: not alive(held_by), timeout=limits.GRACE + 10,
                 message="the supervisor to kill the process")
        assert time.monotonic() - began < 1 + limits.GRACE + 2
        assert "did not end it" in "".join(sup.lines)
        # and starts a fresh one at once, which runs the next call
        assert app.delayed_call(tasks.pid).result(20) not in (held_by, sup.pid)
    finally:
        stop_worker(sup)


def test_the_time_limit_option_applies_to_tasks_without_their_own(
        app: ivy.Ivy, sqlite_url: str) -> None:
    sup = worker(sqlite_url, "--time-limit", "1")
    try:
        assert remote_error(app.delayed_call(tasks.plain, 600)).type == "TaskTimeout"
        assert app.delayed_call(tasks.plain, 0).result(20) != sup.pid
    finally:
        stop_worker(sup)


def test_progress_reaches_the_producer_from_an_inline_call(app: ivy.Ivy,
                                                           sqlite_url: str) -> None:
    sup = worker(sqlite_url)
    try:
        call = app.delayed_call(tasks.progress)
        updates: list[ivy.Progress] = []
        call.on_progress(updates.append)
        assert call.result(20) == "limit.progress attempt 0"
        wait_for(lambda: updates == [ivy.Progress(0.5, "half way")], message="the progress")
    finally:
        stop_worker(sup)


def test_a_worker_whose_queues_have_no_limited_task_runs_alone(sqlite_url: str) -> None:
    # the module declares time-limited tasks, but not on the queue consumed: no supervisor
    process = launch(["worker", "tasks_for_workers", "--queue", "proc", "--queue-url",
                      sqlite_url, "--notifier-url", sqlite_url])
    try:
        assert wait_listening(process, 1) == [process.pid]
    finally:
        stop_worker(process)


# -- the parts --------------------------------------------------------------------------------


def test_the_board_tells_how_late_the_latest_deadline_is() -> None:
    board = limits.Board.create(2)
    try:
        reader = limits.Board(os.dup(board.fileno()), 2)  # as the other process maps it
        assert reader.late(100.0) == 0.0
        slot = board.claim()
        board.set(slot, 90.0)
        assert reader.late(100.0) == 10.0 and reader.late(80.0) == 0.0
        board.set(slot, 0.0)
        assert reader.late(100.0) == 0.0
        reader.close()
    finally:
        board.close()


def test_a_thread_past_the_boards_slots_writes_nothing() -> None:
    board = limits.Board.create(1)
    watch = limits.Watch(board, lambda *a: None)
    watch.begin(1, "first", 0.5)
    watch.begin(2, "second", 0.5)  # no slot left: the process's own watch still sees it
    assert board.late(time.monotonic() + 1.5) == pytest.approx(1.0, abs=0.1)
    assert watch.end(1) is True and board.late(time.monotonic() + 10) == 0.0
    assert watch.end(2) is True
    board.close()


def test_the_watch_takes_over_a_call_past_its_limit_once() -> None:
    board = limits.Board.create(2)
    passed: list[tuple[str, float]] = []
    watch = limits.Watch(board, lambda call_id, limit: passed.append((call_id, limit)))
    watch.begin(1, "late", 0.5)
    watch.begin(2, "on-time", 60)
    now = time.monotonic()
    watch.check(now)
    assert passed == []
    watch.check(now + 1)
    watch.check(now + 2)
    assert passed == [("late", 0.5)]  # once
    # its thread must leave it alone; the other one ends as usual
    assert watch.end(1) is False and watch.end(2) is True
    # the process now has EXIT_GRACE to end before its supervisor kills it
    assert 0 < board.late(now + 1 + limits.EXIT_GRACE + 1) <= 1.5
    board.close()


def test_a_call_that_ends_first_is_not_taken_over() -> None:
    board = limits.Board.create(1)
    passed: list[Any] = []
    watch = limits.Watch(board, lambda *a: passed.append(a))
    watch.begin(1, "quick", 0.1)
    assert watch.end(1) is True
    watch.check(time.monotonic() + 10)
    assert passed == [] and board.late(time.monotonic() + 10) == 0.0
    # the thread's next call uses the same slot
    watch.begin(1, "next", 0.1)
    assert board.late(time.monotonic() + 1.1) == pytest.approx(1.0, abs=0.1)
    board.close()


def test_a_supervisor_signal_stops_a_supervised_worker(sqlite_url: str) -> None:
    sup = worker(sqlite_url)
    pid = wait_listening(sup, 1)[0]
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    assert not alive(pid)


def test_the_watch_wakes_at_a_deadline_sooner_than_its_next_look() -> None:
    # Given a watch asleep until its next look (WATCH_EVERY, 1 s)
    board = limits.Board.create(1)
    passed: list[float] = []
    watch = limits.Watch(board, lambda call_id, limit: passed.append(time.monotonic()))
    watch.start()
    try:
        wait_for(lambda: watch._wake_at > 0, message="the watch to fall asleep")
        # When a call begins with a limit far shorter than that
        began = time.monotonic()
        watch.begin(1, "short", 0.2)
        # Then it is taken over at its deadline, not at the next look
        wait_for(lambda: passed, timeout=5, message="the watch to take the call over")
        assert 0.2 <= passed[0] - began < 0.2 + limits.WATCH_EVERY / 2
    finally:
        watch.stop()
        board.close()
