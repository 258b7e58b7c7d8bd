"""Several processes on one machine through the SQLite default: a SIGKILLed worker loses
nothing, a SIGTERMed one finishes its task and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import SUPPORT_DIR, wait_for
from workers import (
    WorkerProcess,
    killed_worker_task_completes_once,
    producer_app,
    start_worker,
    stop_worker,
)

import ivy

TESTS = SUPPORT_DIR
pytestmark = pytest.mark.slow


def worker_process(url: str, *extra: str) -> WorkerProcess:
    return start_worker(url, url, *extra)


@pytest.fixture
def producer(sqlite_url: str) -> Iterator[ivy.Ivy]:
    app = producer_app(sqlite_url, sqlite_url)
    yield app
    app.close()


def test_sigkilled_worker_loses_nothing_and_callback_runs_once(
    producer: ivy.Ivy, sqlite_url: str, tmp_path: Path
) -> None:
    killed_worker_task_completes_once(producer, lambda: worker_process(sqlite_url), tmp_path)
    wait_for(lambda: producer.queue_backend.size("proc") == 0, message="the ack")


def test_sigterm_finishes_the_task_in_flight_and_exits_0(
    producer: ivy.Ivy, sqlite_url: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    worker = worker_process(sqlite_url)
    try:
        call = producer.delayed_call("proc.slow", 1.0, str(started))
        wait_for(started.exists, timeout=20, message="the task to start")
        output = stop_worker(worker)
        assert call.result(5) == "finished"
        assert producer.queue_backend.size("proc") == 0
        assert "stopping; finishing in-flight tasks" in output
    finally:
        if worker.poll() is None:
            worker.kill()


def test_a_shutdown_deadline_hands_running_calls_back_at_once(
    producer: ivy.Ivy, sqlite_url: str, tmp_path: Path
) -> None:
    # Given a worker with a 1 s shutdown deadline running a call whose first run takes a
    # minute, under a ten-minute lease
    log = tmp_path / "runs"
    first = worker_process(sqlite_url, "--shutdown-timeout", "1")
    try:
        call = producer.delayed_call("proc.long_first", str(log))
        wait_for(lambda: log.exists() and log.read_text().strip(), timeout=20,
                 message="the first run to start")
        # When it gets SIGTERM
        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)
        first.wait(10)
        # Then it exits within a few seconds, saying which call it handed back
        assert time.monotonic() - signalled < 5
        wait_for(lambda: "handed back" in "".join(first.lines), timeout=5,
                 message="the worker's last lines")
        output = "".join(first.lines)
        assert "handed back 1 call(s) still running to their queue: proc.long_first" in output
        # and another worker starts the call at once, not after its lease
        second = worker_process(sqlite_url)
        try:
            assert call.result(20) == 2
            assert time.monotonic() - signalled < 20
        finally:
            stop_worker(second)
    finally:
        if first.poll() is None:
            first.kill()


def test_two_workers_share_a_batch(producer: ivy.Ivy, sqlite_url: str) -> None:
    workers = [worker_process(sqlite_url, "--concurrency", "2") for _ in range(2)]
    try:
        calls = [producer.delayed_call("proc.factorial", n) for n in range(60)]
        results = [c.result(30) for c in calls]
        expected = [1]
        for n in range(1, 60):
            expected.append(expected[-1] * n)
        assert results == expected
        workers_seen = {c.worker for c in calls}
        assert all(w and w.endswith(tuple(f":{p.pid}" for p in workers)) for w in workers_seen)
    finally:
        for w in workers:
            stop_worker(w)


def test_environment_variables_choose_the_backends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    env = {**os.environ, "IVY_QUEUE_URL": url, "IVY_NOTIFIER_URL": url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "tasks_for_workers"], cwd=TESTS, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "ivy", "call", "proc.factorial", "5", "--queue", "proc",
             "--wait", "--timeout", "30"], cwd=tmp_path, env=env, capture_output=True,
            timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout.decode().strip() == "120"
        assert (tmp_path / "env.db").exists()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
