"""What a new user meets in their first hour with the command line (issue 21, "Friction"):
misrouted calls, timeouts that say why, papercuts, backend failures in one line. Each test runs
the real ``ivy`` command, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from workers import start_worker, stop_worker

import ivy

TESTS = Path(__file__).resolve().parent


def run(*args: str, cwd: Path = TESTS, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, input=input)


# -- misrouted calls (friction 2) ------------------------------------------------------------

def test_call_of_a_name_the_module_does_not_register_is_refused_with_a_suggestion(
        sqlite_url: str) -> None:
    # When `ivy call` names a task that -m does not register (a typo), without --queue
    out = run("call", "proc.factorail", "5", "-m", "tasks_for_workers", "--wait",
              "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
    # Then it refuses at once (a usage error), suggesting the registered name
    assert out.returncode == 2, out.stderr
    assert "did you mean proc.factorial?" in out.stderr
    assert "'proc.factorail' is not registered by tasks_for_workers" in out.stderr
    # and the last part of a name is enough to find it
    out = run("call", "factorial", "5", "-m", "tasks_for_workers", "--queue-url", sqlite_url,
              "--notifier-url", sqlite_url)
    assert out.returncode == 2 and "did you mean proc.factorial?" in out.stderr


def test_call_without_module_or_queue_warns_and_its_timeout_names_where(
        sqlite_url: str) -> None:
    # Given a live worker that consumes queue 'proc' only
    worker = start_worker(sqlite_url, sqlite_url, "--heartbeat", "0.5")
    try:
        # When `ivy call --wait` names the task without -m or --queue
        out = run("call", "proc.factorial", "5", "--wait", "--timeout", "1",
                  "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        # Then it warns that the call goes to the default queue, and its timeout says that
        # no live worker consumes that queue, on which URL, as the heartbeats on which
        # notifier say
        assert out.returncode == 3, out.stderr
        assert "warning: sending 'proc.factorial' to the default queue 'ivy'" in out.stderr
        assert (f"no live worker consumes queue 'ivy' on {sqlite_url} (heartbeats on notifier "
                f"{sqlite_url}: 1 worker(s) alive)") in out.stderr
        assert "Is a worker listening" not in out.stderr
        # and a call to the worker's queue that times out says the worker is there
        out = run("call", "proc.slow", "3", "\"/dev/null\"", "--queue", "proc", "--wait",
                  "--timeout", "0.5", "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        assert out.returncode == 3, out.stderr
        assert f"1 live worker(s) consume queue 'proc' on {sqlite_url}" in out.stderr
        assert "warning" not in out.stderr
    finally:
        stop_worker(worker)


def test_task_not_registered_suggests_close_names() -> None:
    app = ivy.Ivy("memory://suggest", "memory://suggest")
    try:
        @app.register_task(name="app.add")
        def add(a: int, b: int) -> int:
            return a + b

        with pytest.raises(ivy.TaskNotRegistered, match=r"Did you mean app\.add\?"):
            app.registry.resolve("app.ad")
        with pytest.raises(ivy.TaskNotRegistered, match=r"Did you mean app\.add\?"):
            app.registry.resolve("add")
        with pytest.raises(ivy.TaskNotRegistered) as caught:
            app.registry.resolve("billing.refund")
        assert "Did you mean" not in str(caught.value)
    finally:
        app.close()
