"""Helpers about this process: its name in logs and heartbeats, and its signal handlers."""

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
def signal_handlers(handler: Any) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``handler`` inside the block (main thread only, as Python
    requires), and put the previous handlers back after it."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

