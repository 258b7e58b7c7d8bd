"""Tasks for the workflow tests' worker processes (queues ``qa`` and ``qb``).

``IVY_TEST_KILL_AFTER=<task name>`` (with ``IVY_TEST_KILL_MARKER=<path>``) makes the first
worker that publishes a workflow step of that task SIGKILL itself right after the publish,
before it acknowledges the step it ran: the crash the continuation must survive."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import ivy


@ivy.register_task(name="wf.add", queue="qa", reserve_time=1.0)
def add(a: int, b: int) -> int:
    return a + b


@ivy.register_task(name="wf.mul", queue="qb", reserve_time=1.0)
def mul(a: int, b: int) -> int:
    return a * b


@ivy.register_task(name="wf.logged", queue="qb", reserve_time=1.0)
def logged(value: Any, log: str) -> Any:
    """Append this run's pid to ``log``, return ``value``: counts the runs of a step."""
    with Path(log).open("a") as f:
        f.write(f"{os.getpid()}\n")
    return value


@ivy.register_task(name="wf.logged_total", queue="qa", reserve_time=1.0)
def logged_total(values: list[int], log: str) -> int:
    with Path(log).open("a") as f:
        f.write(f"{os.getpid()}\n")
    return sum(values)


@ivy.register_task(name="wf.hang_first", queue="qa", reserve_time=1.0)
def hang_first(value: Any, log: str) -> Any:
    """Append this run's pid to ``log``; the first run hangs (to be killed)."""
    path = Path(log)
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if len(path.read_text().split()) == 1:
        time.sleep(60)
    return value


class KillAfterPublish(ivy.Middleware):
    def after_publish(self, message: ivy.Message) -> None:
        target = os.environ.get("IVY_TEST_KILL_AFTER")
        marker = os.environ.get("IVY_TEST_KILL_MARKER")
        if not target or not marker or message.name != target:
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # once only
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


ivy.default.add_middleware(KillAfterPublish())
