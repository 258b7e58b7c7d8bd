"""Helpers about this process: its name in logs and heartbeats, its signal handlers, and the
backoff of its retry loops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any


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
