"""The original ivy README's example, in Python.

Run it with ``python examples/factorial.py``: it starts a worker process (``ivy worker
factorial``, which imports this same file as the module ``factorial``), sends a batch of
calls through the embedded SQLite default (``ivy.db`` in the working directory), shows a
progress bar while the results come back, prints them, stops the worker and exits 0.

Tasks must be registered on both sides under the same globally unique name, which is why the
producer and the worker share this file.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ivy


def factorial(number: int, callback: Callable[[Any, Any], None]) -> None:
    """The original's style: an error-first callback as the last argument."""
    callback(None, math.factorial(number))


def finished(result: int) -> None:
    """Runs in the producer each time a call of the task succeeds."""


ivy.register_task(factorial, finished, name="testpackage.factorial", queue="testpackage")


@ivy.register_task(name="testpackage.digits", queue="testpackage")
async def digits(number: int) -> int:
    """An async task: the number of decimal digits of number!."""
    return len(str(math.factorial(number)))


def main(count: int = 200) -> int:
    from tqdm import tqdm

    here = Path(__file__).resolve().parent
    worker = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "factorial", "--queue", "testpackage",
         "--concurrency", "4", "--log-level", "WARNING"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(here), os.environ.get("PYTHONPATH", "")])})
    try:
        ivy.start_notification_consumer()
        results: dict[int, int] = {}
        lock = threading.Lock()
        with tqdm(total=count, desc="factorials", unit="call") as bar:

            def record(n: int) -> Callable[[ivy.RemoteTaskError | None, Any], None]:
                def callback(err: ivy.RemoteTaskError | None, result: Any) -> None:
                    if err is None:
                        with lock:
                            results[n] = result
                    bar.update(1)
                return callback

            # the original's call: the last positional argument is the callback
            calls = [ivy.delayed_call(factorial, n, record(n)) for n in range(count)]
            for call in calls:
                call.result(timeout=120)
        for n in (0, 1, 5, 10, 20, count - 1):
            print(f"factorial({n}) = {results[n]}" if n < 25 else
                  f"factorial({n}) has {len(str(results[n]))} digits")
        print("digits of 100! (async task):", ivy.delayed_call(digits, 100).result(timeout=60))
        assert all(results[n] == math.factorial(n) for n in range(count))
        print(f"{len(results)} results, all correct")
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        ivy.close()


if __name__ == "__main__":
    sys.exit(main())
