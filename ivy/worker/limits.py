"""Hard time limits inline, in a worker process a supervisor watches (``ivy worker``): the
process's own watch and the supervisor's board of deadlines, and what a call costs for them
(docs/internals/workers.md, "Hard time limits")."""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

log = logging.getLogger("ivy.worker")

#: Seconds past a call's deadline after which the supervisor kills its process: the process's
#: own watch acts within :data:`WATCH_EVERY`, unless something holds the GIL.
GRACE = 2.0
#: Seconds a process whose call passed its limit has to settle it, hand the others back and
#: exit before its supervisor kills it.
EXIT_GRACE = 10.0
#: How often the process's own watch looks at the deadlines.
WATCH_EVERY = 0.05

_SLOT = 8  # one C double per executor thread


class Board:
    """Per executor thread of one worker process, the ``time.monotonic()`` deadline of the
    time-limited call it runs (0.0: none), in memory shared with the supervisor (the
    monotonic clock is the machine's, the same in both processes). The worker writes its
    threads' slots, the supervisor reads them. A thread past the ``slots`` (none should be)
    writes nothing: its process's own watch still sees its calls."""

    def __init__(self, fd: int, slots: int, *, file: IO[bytes] | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots {slots!r} must be at least 1")
        self._file = file
        self._map = mmap.mmap(fd, slots * _SLOT)
        self._view = memoryview(self._map).cast("d")
        self._local = threading.local()
        self._next = itertools.count()

    @classmethod
    def create(cls, slots: int) -> Board:
        """A new board, on an unnamed temporary file whose descriptor a child inherits."""
        file = tempfile.TemporaryFile()  # noqa: SIM115 (the board owns it: closed in close)
        file.truncate(slots * _SLOT)
        return cls(file.fileno(), slots, file=file)

    def fileno(self) -> int:
        return self._file.fileno() if self._file is not None else -1

    def begin(self, deadline: float) -> int:
        """Record this thread's call's ``deadline``; its slot (-1: none left)."""
        slot: int | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = next(self._next)
        if slot >= len(self._view):
            return -1
        self._view[slot] = deadline
        return slot

    def set(self, slot: int, deadline: float) -> None:
        """Write ``slot`` (0.0: no call); nothing for slot -1."""
        if 0 <= slot < len(self._view):
            self._view[slot] = deadline

    def late(self, now: float) -> float:
        """How many seconds the latest deadline on the board is past at ``now`` (0.0: none
        passed)."""
        passed = [now - d for d in self._view if d and d < now]
        return max(passed, default=0.0)

    def close(self) -> None:
        self._view.release()
        self._map.close()
        if self._file is not None:
            self._file.close()


_installed: Board | None = None


def install(board: Board | None) -> None:
    """Declare this process a worker that its supervisor watches through ``board`` (``ivy
    worker`` does, in each process it supervises): the workers it starts from now on run
    time-limited calls inline. None: undo (runner processes again)."""
    global _installed
    _installed = board


def installed() -> Board | None:
    """The board of this process's supervisor (None: no supervisor watches it)."""
    return _installed


@dataclass
class Watched:
    """A time-limited call running inline."""

    call_id: str
    limit: float
    deadline: float
    slot: int
    #: set once the watch took the call over: its thread must no longer settle it
    passed: bool = False


class Watch:
    """The hard limits of the calls this process runs inline: ``on_passed(call_id, limit)``
    runs on the watch's thread when one passes its limit, once; from then on the call
    belongs to it (:meth:`end` returns False to the call's thread)."""

    def __init__(self, board: Board, on_passed: Callable[[str, float], None]) -> None:
        self.board = board
        self._on_passed = on_passed
        self._lock = threading.Lock()
        self._calls: dict[int, Watched] = {}  # by id() of the record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, call_id: str, limit: float) -> Watched:
        deadline = time.monotonic() + limit
        watched = Watched(call_id, limit, deadline, self.board.begin(deadline))
        with self._lock:
            self._calls[id(watched)] = watched
        return watched

    def end(self, watched: Watched) -> bool:
        """The call's thread is done with it: False if its limit passed first (the watch
        settles it; the thread must leave it alone)."""
        with self._lock:
            self._calls.pop(id(watched), None)
            if watched.passed:
                return False
        self.board.set(watched.slot, 0.0)
        return True

    def check(self, now: float) -> None:
        """Hand each call past its deadline at ``now`` to ``on_passed``."""
        with self._lock:
            passed = [w for w in self._calls.values() if w.deadline <= now]
            for watched in passed:
                watched.passed = True
                del self._calls[id(watched)]
        for watched in passed:
            # its settling, the hand-back and the exit get their own grace period
            self.board.set(watched.slot, now + EXIT_GRACE)
            try:
                self._on_passed(watched.call_id, watched.limit)
            except Exception:
                log.exception("worker: ending call %s past its time limit failed",
                              watched.call_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ivy-limits", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_EVERY):
            self.check(time.monotonic())


def park() -> None:
    """Where a call's thread stays once its call passed its limit and the watch took it over:
    the process is about to exit, and nothing in it may settle the call twice."""
    never = threading.Event()
    while True:
        with contextlib.suppress(BaseException):  # a soft timeout or cancel raised in it
            never.wait()
