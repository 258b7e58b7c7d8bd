"""Tasks (and a periodic task) imported by the worker and scheduler processes that the
cancel, schedule and rate-limit tests start, all on queue ``timing``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ivy


@ivy.register_task(name="timing.spin", queue="timing")
def spin(marker: str) -> str:
    """Write ``started`` to ``marker``, spin for 60 s; ``cancelled`` when stopped."""
    Path(marker).write_text("started")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.005)
    except ivy.TaskCancelled:
        Path(marker).write_text(f"cancelled in {os.getpid()}")
        raise
    return "finished"


@ivy.register_task(name="timing.stamp", queue="timing")
def stamp(log: str, value: int) -> int:
    """Append ``<value> <time> <pid>`` to ``log``."""
    with open(log, "a") as f:
        f.write(f"{value} {time.time():.6f} {os.getpid()}\n")
    return value


@ivy.register_task(name="timing.limited", queue="timing", rate_limit="10/s")
def limited(log: str, value: int) -> int:
    """``stamp`` under a rate limit of 10 per second across all workers."""
    return stamp.func(log, value)


TICK_LOG = os.environ.get("IVY_TEST_TICK_LOG")
if TICK_LOG:
    @ivy.periodic_task(every=1, name="timing.tick", queue="timing")
    def tick() -> None:
        """Every second: append ``<time> <pid>`` to $IVY_TEST_TICK_LOG."""
        with open(str(TICK_LOG), "a") as f:
            f.write(f"{time.time():.6f} {os.getpid()}\n")
