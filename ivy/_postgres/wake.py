"""``LISTEN`` threads: :class:`Listener` listens again with backoff after a failure, and
:class:`Wakeups` wakes the waiting consumers of the queue each notification names."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ivy._postgres.connection import Database, PostgresError

log = logging.getLogger("ivy.postgres")

#: how long one wait for notifications lasts before the listener looks whether it must stop
LISTEN_SLICE = 0.25
#: waits between attempts to listen again after the connection failed: doubling up to this
RECONNECT_MAX = 5.0


class Listener:
    """A thread that ``LISTEN``s on ``channels`` with a connection of its own, from
    :meth:`start` until :meth:`close`. After a failure it connects and listens again,
    waiting 0.1 s at first, doubling up to :data:`RECONNECT_MAX` s, and logs once per outage.
    Subclasses override :meth:`_connected` (called on each new connection, once it listens)
    and :meth:`_received` (with the notifications that came in together); both run on the
    listener's thread and may query ``conn``."""

    def __init__(self, db: Database, channels: Sequence[str], name: str) -> None:
        self._db = db
        self._channels = list(channels)
        self._name = name
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()  # a forked child starts a listener of its own
        self._stop = threading.Event()
        #: set while the listener is listening (a notification sent now reaches it)
        self.listening = threading.Event()
        #: set once the first attempt to listen ended, in success or failure
        self.attempted = threading.Event()
        #: what the last failed attempt raised (None: none failed since the last success)
        self.error: BaseException | None = None
        #: the server's pid of the listening connection (None between connections), the one
        #: to name to ``pg_terminate_backend``
        self.backend_pid: int | None = None

    def start(self) -> None:
        """Start the listener thread, if it is not running."""
        with self._start_lock:
            if (self._thread is None or self._pid != os.getpid()) and not self._stop.is_set():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, daemon=True, name=self._name)
                self._thread.start()

    def _run(self) -> None:
        delay, failing = 0.1, False
        while not self._stop.is_set():
            try:
                self._listen(failing)
            except Exception as exc:  # the thread must live on: it listens again
                if not isinstance(exc, (psycopg.Error, PostgresError)):
                    log.error("listener of %s: unexpected error", self._db.settings.url,
                              exc_info=True)
                self.error = exc
                if self.listening.is_set() or not failing:  # once per outage
                    delay = 0.1
                    log.warning("LISTEN on %s failed (%s); %s, and listening is tried again",
                                self._db.settings.url, " ".join(str(exc).split()),
                                self._meanwhile())
                failing = True
                self.listening.clear()
                self.attempted.set()
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            finally:
                self.listening.clear()

    def _meanwhile(self) -> str:
        """What happens while the listener is not listening, for the log."""
        return "consumers poll meanwhile"

    def _listen(self, failing: bool) -> None:
        conn: psycopg.Connection[Any] = self._db.connect()
        try:
            for channel in self._channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.backend_pid = conn.info.backend_pid
            self.listening.set()
            if failing:
                log.warning("listening on %s again", self._db.settings.url)
            self._connected(conn)
            self.error = None
            self.attempted.set()
            while not self._stop.is_set():
                # the first notification, and those that came in the same packet
                notes = list(conn.notifies(timeout=LISTEN_SLICE, stop_after=1))
                if notes:
                    self._received(conn, notes)
        finally:
            self.backend_pid = None
            conn.close()

    def _connected(self, conn: psycopg.Connection[Any]) -> None:
        """Called on each new connection, once it listens: catch up on what it missed."""

    def _received(self, conn: psycopg.Connection[Any], notes: list[psycopg.Notify]) -> None:
        """Called with notifications received together, in the order they were sent."""

    def close(self) -> None:
        """Stop listening (within :data:`LISTEN_SLICE` s, or the query under way)."""
        self._stop.set()
        with self._start_lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(LISTEN_SLICE + 5)


class Wakeups(Listener):
    """Per-queue wake-up counters, advanced by notifications on ``channel`` (each one's
    payload names a queue). A waiter reads :meth:`mark` before it looks at its queue, then
    :meth:`wait`s for the count to move: a notification that came in between is not lost."""

    def __init__(self, db: Database, channel: str) -> None:
        super().__init__(db, [channel], f"ivy-postgres-listen-{channel}")
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        self._everything = 0  # moves on a wake-up of every queue

    def mark(self, queue: str) -> int:
        """The wake-up count of ``queue`` now, for :meth:`wait`."""
        with self._cond:
            return self._counts.get(queue, 0) + self._everything

    def wait(self, queue: str, seen: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a wake-up of ``queue`` after :meth:`mark` returned
        ``seen``; whether one came."""
        with self._cond:
            self._waiting[queue] = self._waiting.get(queue, 0) + 1
            try:
                return self._cond.wait_for(
                    lambda: self._counts.get(queue, 0) + self._everything != seen, timeout)
            finally:
                self._waiting[queue] -= 1

    def waiting(self, queue: str) -> int:
        """How many threads wait for a wake-up of ``queue`` now."""
        with self._cond:
            return self._waiting.get(queue, 0)

    def poke(self, queue: str | None) -> None:
        """Wake the waiters of ``queue`` (None: of every queue)."""
        with self._cond:
            if queue is None:
                self._everything += 1
            else:
                self._counts[queue] = self._counts.get(queue, 0) + 1
            self._cond.notify_all()

    def _connected(self, conn: psycopg.Connection[Any]) -> None:
        self.poke(None)  # whatever was sent while nobody listened

    def _received(self, conn: psycopg.Connection[Any], notes: list[psycopg.Notify]) -> None:
        for note in notes:
            self.poke(note.payload)

    def close(self) -> None:
        """Stop listening (within :data:`LISTEN_SLICE` s) and wake every waiter."""
        super().close()
        self.poke(None)
