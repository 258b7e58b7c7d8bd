"""Wake-ups of waiting consumers: one thread per backend object ``LISTEN``s on the schema's
channel with a connection of its own and wakes the waiters of the queue each notification
names. A lost notification, or a listener between connections, costs a waiter at most its
polling interval: waiters never wait longer than that without looking."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psycopg
from psycopg import sql

from ivy._postgres.connection import Database, PostgresError

log = logging.getLogger("ivy.postgres")

#: how long one wait for notifications lasts before the listener looks whether it must stop
LISTEN_SLICE = 0.25
#: waits between attempts to listen again after the connection failed: doubling up to this
RECONNECT_MAX = 5.0


class Wakeups:
    """Per-queue wake-up counters, advanced by notifications. A waiter reads
    :meth:`mark` before it looks at its queue, then :meth:`wait`s for the count to move: a
    notification that came in between is not lost."""

    def __init__(self, db: Database, channel: str) -> None:
        self._db = db
        self._channel = channel
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        self._everything = 0  # moves on a wake-up of every queue
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()  # a forked child starts a listener of its own
        self._stop = threading.Event()
        #: set while the listener is listening (a notification sent now reaches it)
        self.listening = threading.Event()

    def start(self) -> None:
        """Start the listener thread, if it is not running."""
        with self._cond:
            if (self._thread is None or self._pid != os.getpid()) and not self._stop.is_set():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"ivy-postgres-listen-{self._channel}")
                self._thread.start()

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

    def _run(self) -> None:
        delay, failing = 0.1, False
        while not self._stop.is_set():
            try:
                self._listen(failing)
            except (psycopg.Error, PostgresError) as exc:
                if self.listening.is_set() or not failing:  # once per outage
                    delay = 0.1
                    log.warning("LISTEN on %s failed (%s); consumers poll meanwhile, and "
                                "listening is tried again", self._db.settings.url,
                                " ".join(str(exc).split()))
                failing = True
                self.listening.clear()
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            finally:
                self.listening.clear()

    def _listen(self, failing: bool) -> None:
        conn: psycopg.Connection[Any] = self._db.connect()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.listening.set()
            if failing:
                log.warning("listening on %s again", self._db.settings.url)
            self.poke(None)  # whatever was sent while nobody listened
            while not self._stop.is_set():
                for note in conn.notifies(timeout=LISTEN_SLICE):
                    self.poke(note.payload)
        finally:
            conn.close()

    def close(self) -> None:
        """Stop listening (within :data:`LISTEN_SLICE` s) and wake every waiter."""
        self._stop.set()
        with self._cond:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(LISTEN_SLICE + 5)
        self.poke(None)
