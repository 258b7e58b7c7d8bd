"""The chaos soak's tasks: ``work`` records each execution, so that runs of one call can be
counted; ``poison`` kills its worker each time it runs."""

from __future__ import annotations

import os
import random
import signal
import time

import ivy

_log = None


@ivy.register_task(name="chaos.work", queue="chaos")
def work(i: int, token: str) -> int:
    global _log
    if _log is None:
        path = os.path.join(os.environ["CHAOS_LOG_DIR"], f"exec-{os.getpid()}.log")
        _log = open(path, "a")  # noqa: SIM115 - kept open for the life of the worker
    time.sleep(random.uniform(0, 0.004))
    _log.write(f"{token} {time.time():.3f}\n")
    _log.flush()
    return i


@ivy.register_task(name="chaos.poison", queue="chaos")
def poison(i: int, token: str) -> int:
    """A poison message: records its run, then SIGKILLs its own worker (as a segfault or an
    OOM kill would), every time it runs, until the queue's delivery limit stops it."""
    path = os.path.join(os.environ["CHAOS_LOG_DIR"], f"poison-{os.getpid()}.log")
    with open(path, "a") as f:
        f.write(token + "\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return i
