"""``ivy worker --burst``: run until the queues have nothing due and nothing runs, then exit 0
(for cron jobs and CI)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import ivy

TESTS = Path(__file__).resolve().parents[1] / "support"


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivy", *args], cwd=TESTS, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(params=["sqlite", "amqp+redis"])
def burst_urls(request: pytest.FixtureRequest, sqlite_url: str) -> tuple[str, str]:
    if request.param == "sqlite":
        return sqlite_url, sqlite_url
    return request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")


def test_a_burst_worker_runs_what_is_due_then_exits_0(burst_urls: tuple[str, str]) -> None:
    # Given 20 calls waiting in queue proc, and one due in an hour
    queue_url, notifier_url = burst_urls
    app = ivy.Ivy(queue_url, notifier_url)
    try:
        calls = [app.send_task("proc.factorial", [n], queue="proc") for n in range(20)]
        later = app.send_task("proc.factorial", [3], queue="proc", delay=3600)
        for call in [*calls, later]:
            call.sent(30)
        # When a worker runs them with --burst
        started = time.monotonic()
        out = run("worker", "tasks_for_workers", "--queue", "proc", "--queue-url", queue_url,
                  "--notifier-url", notifier_url, "--burst")
        # Then it ran every due call, and exited 0 on its own soon after
        assert out.returncode == 0, out.stderr
        assert "(--burst); stopping after" in out.stderr
        assert [c.result(10) for c in calls] == [1, 1, 2, 6, 24, 120, 720, 5040, 40320,
                                                 362880, 3628800, 39916800, 479001600,
                                                 6227020800, 87178291200, 1307674368000,
                                                 20922789888000, 355687428096000,
                                                 6402373705728000, 121645100408832000]
        assert time.monotonic() - started < 60
        # and the call due later is still waiting, not run
        assert not later.done()
    finally:
        app.close()


def test_burst_refuses_several_processes() -> None:
    out = run("worker", "tasks_for_workers", "--burst", "--processes", "2",
              "--queue-url", "memory://burst")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--burst runs one worker process" in out.stderr
