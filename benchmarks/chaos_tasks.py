"""The chaos soak's task: records each execution, so that runs of one call can be counted."""

from __future__ import annotations

import os
import random
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
    _log.write(token + "\n")
    _log.flush()
    return i
