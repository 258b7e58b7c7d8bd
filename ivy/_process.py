"""Helpers about this process: its name in logs and heartbeats, its signal handlers, the
backoff of its retry loops, and a worker's run until a signal (:func:`run_until_signal`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger("ivy.worker")


def worker_name() -> str:
    """``host:pid``: how a worker of this process is named in logs, heartbeats and events."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def signal_handlers(handler: Any, *, usr1: Any = None) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``handler`` (and SIGUSR1 to ``usr1``, where the platform
    has it) inside the block, in the main thread only, as Python requires; put the previous
    handlers back after it."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        wanted = [(signal.SIGTERM, handler), (signal.SIGINT, handler)]
        if usr1 is not None and hasattr(signal, "SIGUSR1"):
            wanted.append((signal.SIGUSR1, usr1))
        for sig, function in wanted:
            previous[sig] = signal.signal(sig, function)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Backoff:
    """Exponential backoff after a failure: 0.1 s doubling to 10 s, reset on success."""

    def __init__(self) -> None:
        self.delay = 0.1

    def reset(self) -> None:
        self.delay = 0.1

    def wait(self, stop: threading.Event) -> None:
        """Wait the current delay (less if ``stop`` is set), then double it."""
        stop.wait(self.delay)
        self.delay = min(self.delay * 2, 10.0)


class Runnable(Protocol):
    """What :func:`run_until_signal` needs of a worker (:class:`ivy.Worker`)."""

    name: str
    queues: list[str]

    @property
    def running(self) -> bool: ...

    @property
    def processed(self) -> int: ...

    def drained(self) -> bool: ...

    def stop(self, timeout: float | None = None) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def hand_back(self) -> int: ...


def run_until_signal(worker: Runnable, stop: threading.Event | None = None, *,
                     burst: bool = False, shutdown_timeout: float | None = None) -> None:
    """What :meth:`ivy.Worker.run_forever` documents."""
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            log.warning("worker %s: second signal, exiting now; unfinished messages come "
                        "back when their reservation expires", worker.name)
            os._exit(1)
        log.info("worker %s: received %s", worker.name, signal.Signals(signum).name)
        stop.set()

    with signal_handlers(on_signal):
        while not stop.wait(0.2) and worker.running:
            if burst and worker.drained():
                log.info("worker %s: nothing due on %s (--burst); stopping after %d messages",
                         worker.name, ", ".join(worker.queues), worker.processed)
                break
        worker.stop(shutdown_timeout)
        if shutdown_timeout is not None and not worker.join(0):
            worker.hand_back()
