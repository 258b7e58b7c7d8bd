"""Worker processes for the multi-process tests: start one, stop one, and the killed-worker
scenario that every durable backend must pass."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from common import SUPPORT_DIR, wait_for

import ivy


class WorkerProcess(subprocess.Popen[bytes]):
    """``python -m ivy worker tasks_for_workers``; its output is collected in ``lines``."""

    lines: list[str]


#: a worker's "listening" log line, with its pid
LISTENING = re.compile(r"worker \S+:(\d+): listening on")


def spawn(argv: list[str], *, cwd: Path = SUPPORT_DIR, env: dict[str, str] | None = None,
          new_group: bool = False, ready: str | None = None,
          started: threading.Event | None = None) -> WorkerProcess:
    """Start ``python -m ivy ARGV`` in ``cwd`` (in a process group of its own with
    ``new_group``) and collect its output in ``lines`` (its children's too: they share its
    stdout); ``started`` is set once a line shows ``ready``, or the output ends."""
    process = WorkerProcess([sys.executable, "-m", "ivy", *argv], cwd=cwd,
                            env=env or dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=new_group)
    process.lines = []

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:  # keep reading: a full pipe would block the worker
            line = raw.decode(errors="replace")
            process.lines.append(line)
            if started is not None and ready is not None and ready in line:
                started.set()
        if started is not None:
            started.set()

    threading.Thread(target=read, daemon=True).start()
    return process


def launch(argv: list[str], env: dict[str, str] | None = None, ready: str = "listening on",
           what: str = "worker") -> WorkerProcess:
    """Start ``python -m ivy ARGV`` in the tests' folder, collect its output in ``lines`` and
    return once a line shows ``ready`` (or it exited: then fail with its output)."""
    started = threading.Event()
    process = spawn(argv, env=env, ready=ready, started=started)
    started.wait(60)
    if process.poll() is not None:
        raise AssertionError(f"{what} exited with {process.returncode}: "
                             f"{''.join(process.lines)}")
    return process


class Lines:
    """A subprocess (``argv``, in ``cwd``) whose stdout and stderr lines are read by threads,
    to wait on with a deadline."""

    def __init__(self, argv: list[str], *, cwd: Path = SUPPORT_DIR,
                 env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.out),
                                              (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for_line(self, lines: list[str], text: str, timeout: float = 30) -> None:
        """Wait until one of ``lines`` (``self.out`` or ``self.err``) holds ``text``; fail if
        the process exits first."""
        wait_for(lambda: any(text in line for line in lines) or self.process.poll() is not None,
                 timeout=timeout, message=f"{text!r} from the process")
        assert self.process.poll() is None, "\n".join(self.err)

    def wait_for_err(self, text: str, timeout: float = 30) -> None:
        self.wait_for_line(self.err, text, timeout)

    def interrupt(self, timeout: float = 20) -> int:
        """Ctrl-C: SIGINT, then :meth:`wait`."""
        self.process.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float = 20) -> int:
        """Its exit status, once every line of its output was read; killed if it does not
        exit within ``timeout`` seconds (then ``subprocess.TimeoutExpired``)."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise
        for reader in self._readers:
            reader.join(10)
        return status


def listening(process: WorkerProcess) -> list[int]:
    """The pids of the worker processes that have said they listen, in order."""
    return [int(m.group(1)) for line in list(process.lines) if (m := LISTENING.search(line))]


def wait_listening(process: WorkerProcess, count: int) -> list[int]:
    """Wait until ``count`` worker processes said they listen; their pids, in order."""
    wait_for(lambda: len(listening(process)) >= count or process.poll() is not None,
             timeout=60, message=f"{count} worker processes to listen")
    assert process.poll() is None, "".join(process.lines)
    return listening(process)


def start_worker(queue_url: str, notifier_url: str, *extra: str,
                 env: dict[str, str] | None = None) -> WorkerProcess:
    """Start a worker on queue ``proc`` and return once it listens."""
    return launch(["worker", "tasks_for_workers", "--queue", "proc", "--queue-url", queue_url,
                   "--notifier-url", notifier_url, *extra], env)


def stop_worker(process: WorkerProcess, timeout: float = 30) -> str:
    """SIGTERM a worker, expect exit 0, return its output; on a hang, fail with every
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
            process.wait()
        pytest.fail(f"worker did not stop within {timeout} s:\n{''.join(process.lines)[-8000:]}")
    output = "".join(process.lines)
    assert code == 0, output
    return output


def producer_app(queue_url: str, notifier_url: str) -> ivy.Ivy:
    """A producer that registers the proc.* tasks the worker processes run."""
    import tasks_for_workers  # noqa: F401 - registers the proc.* tasks on ivy.default

    return producer_with(queue_url, notifier_url, "proc.")


def producer_with(queue_url: str, notifier_url: str, prefix: str) -> ivy.Ivy:
    """An app that registers the tasks of ``ivy.default`` whose names start with ``prefix``
    (the tasks a test module's worker processes run)."""
    app = ivy.Ivy(queue_url, notifier_url)
    for name in ivy.default.registry.names():
        task = ivy.default.registry.get(name)
        if task is not None and name.startswith(prefix):
            app.registry.add(task)
    return app


def killed_worker_task_completes_once(app: ivy.Ivy, start: Callable[[], WorkerProcess],
                                      tmp_path: Path) -> None:
    """A worker is SIGKILLed mid-task; the message comes back to a second worker, the task
    completes, and the producer's callback runs exactly once."""
    import tasks_for_workers

    app.registry.add(tasks_for_workers.hang_first)
    log = tmp_path / "runs.log"
    callbacks: list[tuple[Any, Any]] = []
    lock = threading.Lock()

    def callback(err: Any, result: Any) -> None:
        with lock:
            callbacks.append((err, result))

    first = start()
    second: WorkerProcess | None = None
    try:
        call = app.delayed_call("proc.hang_first", str(log), callback=callback)
        wait_for(lambda: log.exists() and log.read_text().strip(), timeout=30,
                 message="the task to start on the first worker")
        first.kill()
        first.wait(10)
        second = start()
        assert call.result(60) == 2
        assert log.read_text().split() == [str(first.pid), str(second.pid)]
        assert callbacks == [(None, 2)]
        assert app.pending_calls() == []
    finally:
        if second is not None:
            stop_worker(second)
