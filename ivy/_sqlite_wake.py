"""Cross-process wake-ups for the SQLite queue backend and notifier.

Wake-ups: each waiting consumer or subscription binds a Unix datagram socket in a folder named
after the database file; a writer sends one byte to every socket there after it commits. That
turns polling into an event (a new message is seen in well under a millisecond) while a poll at a
bounded interval remains the fallback, so a lost datagram only costs latency, never a message.
Where Unix sockets are missing (Windows), only the poll is used.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import uuid


class WakeListener:
    """A socket that writers of the same database and kind poke after they commit."""

    def __init__(self, directory: str) -> None:
        self._sock: socket.socket | None = None
        self.path = ""
        if not hasattr(socket, "AF_UNIX"):
            return
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        sock.setblocking(False)
        self._sock = sock

    def wait(self, timeout: float) -> None:
        """Return on a wake-up or after ``timeout`` seconds, and drain pending wake-ups."""
        if timeout <= 0:
            return
        sock = self._sock
        if sock is None:
            threading.Event().wait(min(timeout, 0.1))
            return
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            with contextlib.suppress(OSError):
                while True:
                    sock.recv(64)

    def interrupt(self) -> None:
        """Wake a wait() in progress at once (from another thread)."""
        if self._sock is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(
                    OSError):
                s.setblocking(False)  # a full buffer means a wake-up is pending already
                s.sendto(b"!", self.path)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class WakeSender:
    """Pokes every listener of one database and kind; never blocks, never raises.

    The listeners are the socket files in the wake directory. Listing it on every wake cost
    ~15% of a SQLite worker's time per task, so the listing is kept while the directory's
    modification time stays the one it was listed at. Since file systems stamp that time
    coarsely (a tick of some ms), a listing taken less than :attr:`SETTLE` seconds after the
    stamp is not trusted: a listener bound in the same tick would share the stamp.
    """

    SETTLE = 0.05

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._listed: list[str] = []
        self._stamp = -1
        self._trusted = False
        self._sock: socket.socket | None = None
        if hasattr(socket, "AF_UNIX"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        self._lock = threading.Lock()

    def wake(self) -> None:
        if self._sock is None:
            return
        with self._lock:
            try:
                entries = self._listeners()
            except FileNotFoundError:
                return
            for path in entries:
                try:
                    self._sock.sendto(b"!", path)
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has wake-ups pending already
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # left behind by a process that died
                    self._trusted = False
                except OSError:
                    pass

    def _listeners(self) -> list[str]:
        stamp = os.stat(self._dir).st_mtime_ns
        if stamp == self._stamp and self._trusted:
            return self._listed
        listed = [os.path.join(self._dir, name) for name in os.listdir(self._dir)]
        self._listed, self._stamp = listed, stamp
        self._trusted = time.time() - stamp / 1e9 > self.SETTLE
        return listed

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
