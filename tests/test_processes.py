"""Several processes on one machine through the SQLite default: a SIGKILLed worker loses
nothing, a SIGTERMed one finishes its task and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

import ivy

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def worker_process(url: str, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``ivy worker`` and return once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "tasks_for_workers", "--queue", "proc",
         "--queue-url", url, "--notifier-url", url, *extra],
        cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    seen = b""
    for line in process.stdout:  # ends at EOF if the worker dies
        seen += line
        if b"listening on" in line:
            return process
    raise AssertionError(f"worker exited with {process.wait()}: {seen.decode()}")


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 20) -> str:
    """SIGTERM a worker, expect exit 0 and return its output; on a hang, fail with every
    thread's stack (the worker dumps them on SIGUSR1)."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        try:
            process.wait(2)
        except subprocess.TimeoutExpired:
            process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
        pytest.fail(f"worker did not stop within {timeout} s:\n{output[-8000:]}")
    output = process.stdout.read().decode() if process.stdout else ""
    assert code == 0, output
    return output


@pytest.fixture
def producer(sqlite_url: str) -> Iterator[ivy.Ivy]:
    app = ivy.Ivy(sqlite_url, sqlite_url)
    import tasks_for_workers

    for name in ("proc.factorial", "proc.hang_first", "proc.slow"):
        task = ivy.default.registry.get(name)
        assert task is not None
        app.registry.add(task)
    _ = tasks_for_workers
    yield app
    app.close()


def test_sigkilled_worker_loses_nothing_and_callback_runs_once(
    producer: ivy.Ivy, sqlite_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    callbacks: list[tuple[Any, Any]] = []
    lock = threading.Lock()

    def callback(err: Any, result: Any) -> None:
        with lock:
            callbacks.append((err, result))

    first = worker_process(sqlite_url)
    second: subprocess.Popen[bytes] | None = None
    try:
        # Given a call whose task is running on the first worker
        call = producer.delayed_call("proc.hang_first", str(log), callback=callback)
        wait_for(lambda: log.exists() and log.read_text().strip(), timeout=20,
                 message="the task to start on the first worker")
        assert call.status in ("scheduled", "running")
        # When that worker is SIGKILLed mid-task and a second worker starts
        first.kill()
        first.wait(10)
        second = worker_process(sqlite_url)
        # Then the task completes on the second worker once its reservation expires
        assert call.result(30) == 2
        pids = log.read_text().split()
        assert pids[0] == str(first.pid) and pids[1] == str(second.pid)
        # and the producer's callback ran exactly once
        assert callbacks == [(None, 2)]
        wait_for(lambda: producer.queue_backend.size("proc") == 0, message="the ack")
        assert producer.pending_calls() == []
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


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
