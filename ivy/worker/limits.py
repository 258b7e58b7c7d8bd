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
from typing import IO

log = logging.getLogger("ivy.worker")

#: Seconds past a call's deadline after which the supervisor kills its process: the process's
#: own watch acts at the deadline (it sleeps until then), unless something holds the GIL.
GRACE = 2.0
#: Seconds a process whose call passed its limit has to settle it, hand the others back and
#: exit before its supervisor kills it.
EXIT_GRACE = 10.0
#: The longest the process's own watch sleeps: it wakes at the earliest deadline, or after
#: this many seconds (a call may start with an earlier one meanwhile: it wakes the watch then).
WATCH_EVERY = 1.0

_SLOT = 8  # one C double per executor thread


class Board:
    """Per executor thread of one worker process, the ``time.monotonic()`` deadline of the
    time-limited call it runs (0.0: none), in memory shared with the supervisor (the
    monotonic clock is the machine's, the same in both processes). The worker writes its
    threads' slots, the supervisor reads them. A thread past the ``slots`` (none should be)
    gets slot -1 and writes nothing: its process's own watch still sees its calls."""

    def __init__(self, fd: int, slots: int, *, file: IO[bytes] | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots {slots!r} must be at least 1")
        self._file = file
        self._map = mmap.mmap(fd, slots * _SLOT)
        #: the slots, written in place (``view[slot] = deadline``) by :class:`Watch`
        self.view = memoryview(self._map).cast("d")
        self._next = itertools.count()

    @classmethod
    def create(cls, slots: int) -> Board:
        """A new board, on an unnamed temporary file whose descriptor a child inherits."""
        file = tempfile.TemporaryFile()  # noqa: SIM115 (the board owns it: closed in close)
        file.truncate(slots * _SLOT)
        return cls(file.fileno(), slots, file=file)

    def fileno(self) -> int:
        return self._file.fileno() if self._file is not None else -1

    def claim(self) -> int:
        """A slot of its own for a thread (-1: none left)."""
        slot = next(self._next)
        return slot if slot < len(self.view) else -1

    def set(self, slot: int, deadline: float) -> None:
        """Write ``slot`` (0.0: no call); nothing for slot -1."""
        if 0 <= slot < len(self.view):
            self.view[slot] = deadline

    def late(self, now: float) -> float:
        """How many seconds the latest deadline on the board is past at ``now`` (0.0: none
        passed)."""
        passed = [now - d for d in self.view if d and d < now]
        return max(passed, default=0.0)

    def close(self) -> None:
        self.view.release()
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


#: a call running inline under the watch: its deadline, call id, limit and board slot
_Entry = tuple[float, str, float, int]


class Watch:
    """The hard limits of the calls this process runs inline, one per executor thread at a
    time: ``on_passed(call_id, limit)`` runs on the watch's thread when one passes its limit,
    once; from then on the call belongs to it (:meth:`end` returns False to its thread)."""

    def __init__(self, board: Board, on_passed: Callable[[str, float], None]) -> None:
        self.board = board
        self._on_passed = on_passed
        self._view = board.view
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._calls: dict[int, _Entry] = {}  # by thread ident
        self._slots: dict[int, int] = {}  # thread ident -> its slot on the board
        self._wake_at = 0.0  # when the watch's thread looks next
        self._stopping = False
        self._thread: threading.Thread | None = None

    def begin(self, thread_id: int, call_id: str, limit: float) -> None:
        """Thread ``thread_id`` starts call ``call_id`` under ``limit`` seconds."""
        deadline = time.monotonic() + limit
        slot = self._slots.get(thread_id)
        if slot is None:
            slot = self._slots[thread_id] = self.board.claim()
        with self._lock:
            self._calls[thread_id] = (deadline, call_id, limit, slot)
            if deadline < self._wake_at:  # sooner than the watch looks: wake it
                self._wakeup.notify()
        if slot >= 0:
            self._view[slot] = deadline

    def end(self, thread_id: int) -> bool:
        """Thread ``thread_id`` is done with its call: False if the call's limit passed first
        (the watch settles it; the thread must leave it alone)."""
        with self._lock:
            entry = self._calls.pop(thread_id, None)
        if entry is None:
            return False
        if entry[3] >= 0:
            self._view[entry[3]] = 0.0
        return True

    def check(self, now: float) -> None:
        """Hand each call past its deadline at ``now`` to ``on_passed``."""
        with self._lock:
            passed = [(t, e) for t, e in self._calls.items() if e[0] <= now]
            for thread_id, _ in passed:
                del self._calls[thread_id]
        for _, (_, call_id, limit, slot) in passed:
            # its settling, the hand-back and the exit get their own grace period
            self.board.set(slot, now + EXIT_GRACE)
            try:
                self._on_passed(call_id, limit)
            except Exception:
                log.exception("worker: ending call %s past its time limit failed", call_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ivy-limits", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wakeup.notify()

    def _loop(self) -> None:
        """Sleep until the earliest deadline (at most :data:`WATCH_EVERY`), then check."""
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                self._wake_at = min([now + WATCH_EVERY, *(e[0] for e in self._calls.values())])
                if self._wake_at > now:
                    self._wakeup.wait(self._wake_at - now)
                    continue  # woken early, or on time: look again
            self.check(time.monotonic())


def park() -> None:
    """Where a call's thread stays once its call passed its limit and the watch took it over:
    the process is about to exit, and nothing in it may settle the call twice."""
    never = threading.Event()
    while True:
        with contextlib.suppress(BaseException):  # a soft timeout or cancel raised in it
            never.wait()
