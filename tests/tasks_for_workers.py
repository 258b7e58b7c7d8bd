"""Tasks imported by the worker processes that the multi-process and CLI tests start."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ivy


@ivy.register_task(name="proc.factorial", queue="proc")
def factorial(n: int) -> int:
    return 1 if n <= 1 else n * factorial.func(n - 1)


@ivy.register_task(name="proc.hang_first", queue="proc", reserve_time=1.0)
def hang_first(log: str) -> int:
    """Append this run's pid to ``log``; the first run hangs (to be killed), later ones return
    how many runs there were."""
    path = Path(log)
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    runs = len(path.read_text().split())
    if runs == 1:
        time.sleep(60)
    return runs


@ivy.register_task(name="proc.long_first", queue="proc", reserve_time=600.0)
def long_first(log: str) -> int:
    """As hang_first, with a ten-minute lease: a message its worker gives up without handing
    it back comes back only after that."""
    return hang_first.func(log)


@ivy.register_task(name="proc.slow", queue="proc")
def slow(seconds: float, started: str) -> str:
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


@ivy.register_task(name="proc.pause", queue="proc")
def pause(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


@ivy.register_task(name="proc.crash", queue="proc")
def crash(log: str) -> None:
    """Append this run's pid to ``log``, then end the worker process at once: a poison
    message, as a task that segfaults or exhausts memory is."""
    with Path(log).open("a") as f:
        f.write(f"{os.getpid()}\n")
    os._exit(3)
