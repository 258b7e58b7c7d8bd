"""When a worker stops by itself, to be replaced by a fresh process: after ``max_messages``
deliveries, or once its resident memory passes ``max_memory`` MB."""

from __future__ import annotations

import importlib
import os
import threading
import time

from ivy.errors import ConfigurationError

#: Seconds between the heartbeat's looks at the worker's memory.
MEMORY_CHECK_EVERY = 1.0
MB = 1024 * 1024


def rss_bytes(pid: int | None = None) -> int:
    """The resident set size of this process (or of process ``pid``), in bytes."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        raise ConfigurationError(
            "max_memory needs /proc/self/statm (Linux) or psutil (pip install psutil) to read "
            "the worker's memory") from None
    return int(psutil.Process(pid).memory_info().rss)


class Recycling:
    """A worker's limits before it is replaced: ``max_messages`` admitted deliveries and
    ``max_memory`` MB of RSS (None: no limit). :attr:`reason` says why it is full."""

    def __init__(self, max_messages: int | None = None,
                 max_memory: float | None = None) -> None:
        if max_messages is not None and (isinstance(max_messages, bool) or max_messages < 1):
            raise ValueError(f"max_messages {max_messages!r} must be at least 1, or None for "
                             "no limit")
        if max_memory is not None and (isinstance(max_memory, bool)
                                       or not isinstance(max_memory, (int, float))
                                       or not max_memory > 0):
            raise ValueError(f"max_memory {max_memory!r} must be a number of MB > 0, or None "
                             "for no limit")
        self.max_messages = max_messages
        self.max_memory = max_memory
        if max_memory is not None:
            rss_bytes()  # fails now, at start, where memory cannot be read
        #: deliveries admitted so far
        self.admitted = 0
        #: why the worker admits no more (None: it still does)
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0

    @property
    def full(self) -> bool:
        """Whether the worker reached a limit: it admits no more, and stops once idle."""
        return self.reason is not None

    def admit(self) -> str | None:
        """Count one admitted delivery; the reason, the first time a limit is reached."""
        with self._lock:
            self.admitted += 1
            if (self.reason is None and self.max_messages is not None
                    and self.admitted >= self.max_messages):
                self.reason = f"admitted its {self.admitted} messages (max_messages)"
                return self.reason
        return None

    def check_memory(self, *, timed: bool = False) -> str | None:
        """Look at the memory (``timed``: only if :data:`MEMORY_CHECK_EVERY` s passed since
        the last timed look); the reason, the first time it is past ``max_memory``."""
        if self.max_memory is None or self.reason is not None:
            return None
        if timed:
            now = time.monotonic()
            if now < self._next_check:
                return None
            self._next_check = now + MEMORY_CHECK_EVERY
        rss = rss_bytes()
        if rss <= self.max_memory * MB:
            return None
        with self._lock:
            if self.reason is not None:
                return None
            self.reason = (f"its memory (RSS {rss / MB:.0f} MB) passed max_memory "
                           f"{self.max_memory:g} MB")
            return self.reason
