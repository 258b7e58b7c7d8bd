"""Worker and scheduler processes for the timing tests (module ``tasks_for_timing``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from conftest import TESTS_DIR
from workers import WorkerProcess

import ivy


def start(command: str, queue_url: str, notifier_url: str, *extra: str,
          env: dict[str, str] | None = None, ready: str = "listening on") -> WorkerProcess:
    """Start ``python -m ivy <command> tasks_for_timing`` and return once its output shows
    ``ready``."""
    process = WorkerProcess(
        [sys.executable, "-m", "ivy", command, "tasks_for_timing", "--queue-url", queue_url,
         "--notifier-url", notifier_url, *extra],
        cwd=TESTS_DIR, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    process.lines = []
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            process.lines.append(line)
            if ready in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    started.wait(60)
    if process.poll() is not None:
        raise AssertionError(f"{command} exited with {process.returncode}: "
                             f"{''.join(process.lines)}")
    return process


def producer(queue_url: str, notifier_url: str) -> ivy.Ivy:
    """A producer that registers the timing.* tasks."""
    import tasks_for_timing  # noqa: F401 - registers them on ivy.default

    app = ivy.Ivy(queue_url, notifier_url)
    for name in ivy.default.registry.names():
        task = ivy.default.registry.get(name)
        if task is not None and name.startswith("timing."):
            app.registry.add(task)
    return app



