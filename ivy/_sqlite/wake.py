"""Cross-process wake-ups for the SQLite queue backend and notifier: a datagram to each waiter
after a commit, with polling as the fallback (docs/internals/sqlite.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import threading
import time
import uuid

log = logging.getLogger("ivy.sqlite")

#: wake directories found unusable, each logged once per process
_refused: set[str] = set()
_refused_lock = threading.Lock()


def private_dir(directory: str) -> bool:
    """Make ``directory`` (mode 0700) or check the one there is a directory of this user's,
    narrowing its mode to 0700; False, logged once, when it cannot be used."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:  # a symbolic link, a file, or gone
        return _refuse(directory, f"it cannot be opened as a directory ({exc.strerror})")
    try:
        found = os.fstat(fd)
        if not stat.S_ISDIR(found.st_mode):
            return _refuse(directory, "it is not a directory")
        if found.st_uid != os.getuid():
            return _refuse(directory, f"it belongs to uid {found.st_uid}, not to this user "
                                      f"(uid {os.getuid()})")
        if stat.S_IMODE(found.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        return True
    except OSError as exc:
        return _refuse(directory, f"its mode cannot be checked or set to 0700 ({exc.strerror})")
    finally:
        os.close(fd)


def _refuse(directory: str, why: str) -> bool:
    with _refused_lock:
        first = directory not in _refused
        _refused.add(directory)
    if first:
        log.warning("sqlite: wake-ups are off in this process: the wake directory %s is not "
                    "used because %s; waiting consumers and calls poll instead (new work is "
                    "seen up to a second later). Remove that directory, or point TMPDIR to a "
                    "directory of this user's", directory, why)
    return False


class WakeListener:
    """A socket that writers of the same database and kind poke after they commit."""

    def __init__(self, directory: str) -> None:
        self._sock: socket.socket | None = None
        self.path = ""
        if not hasattr(socket, "AF_UNIX") or not private_dir(directory):
            return
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
        found = os.lstat(self._dir)
        stamp = found.st_mtime_ns
        if stamp == self._stamp and self._trusted:
            return self._listed
        if (not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid()
                or stat.S_IMODE(found.st_mode) & 0o077):
            return []  # not ours (the listeners say why): nobody of ours listens there
        listed = [os.path.join(self._dir, name) for name in os.listdir(self._dir)]
        self._listed, self._stamp = listed, stamp
        self._trusted = time.time() - stamp / 1e9 > self.SETTLE
        return listed

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
