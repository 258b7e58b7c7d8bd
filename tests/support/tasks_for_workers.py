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


# -- hard time limits (tests/worker/test_time_limits*.py): in runners, or inline in `ivy worker` --

@ivy.register_task(name="limit.stuck", queue="limit", time_limit=2)
def stuck(seconds: float, started: str) -> int:
    """Write this process's id to ``started``, then block in one C call."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@ivy.register_task(name="limit.pid", queue="limit", time_limit=30)
def pid() -> int:
    return os.getpid()


@ivy.register_task(name="limit.retried", queue="limit", time_limit=1, max_retries=1,
                   retry_on=(ivy.TaskTimeout,), backoff=[0.01])
def retried(log: str) -> int:
    """The first run hangs past the limit; the retry returns how many runs there were."""
    return hang_first.func(log)


@ivy.register_task(name="limit.progress", queue="limit", time_limit=30)
def progress() -> str:
    context = ivy.current()
    context.progress(0.5, "half way")
    return f"{context.task} attempt {context.attempt}"


@ivy.register_task(name="limit.async_blocked", queue="limit", time_limit=1)
async def async_blocked() -> None:
    """Blocks its event loop (a C call in a coroutine): only a kill ends it."""
    time.sleep(60)


@ivy.register_task(name="limit.dies", queue="limit", time_limit=30)
def dies() -> None:
    os._exit(7)


@ivy.register_task(name="limit.soft", queue="limit", time_limit=30, timeout=0.3)
def soft() -> None:
    """Passes its soft timeout in Python code: the exception stops it, no kill needed."""
    while True:
        time.sleep(0.01)


@ivy.register_task(name="limit.holds_gil", queue="limit", time_limit=1)
def holds_gil(started: str) -> int:
    """Write this process's id to ``started``, then compute in one C call that never releases
    the GIL (tens of seconds): no other thread of the process runs meanwhile."""
    Path(started).write_text(str(os.getpid()))
    return pow(3, 10**8).bit_length()


_LEAKED: list[bytes] = []


@ivy.register_task(name="limit.leaks", queue="limit", time_limit=30)
def leaks(megabytes: int) -> int:
    """Keep ``megabytes`` MB (touched, so resident) in its process; return the process id."""
    _LEAKED.append(b"x" * (megabytes * 1024 * 1024))
    return os.getpid()


@ivy.register_task(name="limit.plain", queue="limit")
def plain(seconds: float) -> int:
    """No limit of its own: the worker's default applies."""
    time.sleep(seconds)
    return os.getpid()
