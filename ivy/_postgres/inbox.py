"""What the PostgreSQL notifier's subscriptions receive: a ``LISTEN`` thread per subscription that
reads the rows its notifications name (docs/internals/postgres.md, "Subscriptions")."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import psycopg

from ivy._postgres.connection import Database, PostgresUnavailable
from ivy._postgres.store import StoreStatements, notify_channel
from ivy._postgres.wake import Listener

#: call ids looked up in one query when a subscription catches up
CATCH_UP_CHUNK = 1000


class Inbox(Listener):
    """A listener that queues bodies for :meth:`get`. :meth:`open` starts it and returns once
    it listens, so that nothing sent afterwards is missed."""

    def __init__(self, db: Database, channel: str, name: str) -> None:
        super().__init__(db, [channel], name)
        self.channel = channel
        self._cond = threading.Condition()
        self._bodies: deque[bytes] = deque()
        self._closed = False

    def open(self) -> None:
        """Start listening; return once the first connection listens (and caught up).
        Raises :class:`PostgresUnavailable` if it could not, within the connect timeout."""
        self.start()
        wait = self._db.settings.connect_timeout + 5
        if not self.attempted.wait(wait) or self.error is not None:
            self.close()
            error = self.error
            raise PostgresUnavailable(self._db.describe(error) if error is not None else (
                f"PostgreSQL at {self._db.settings.where} ({self._db.settings.url}): "
                f"could not LISTEN within {wait:g} s"))

    def _deliver(self, bodies: list[bytes]) -> None:
        if bodies:
            with self._cond:
                self._bodies.extend(bodies)
                self._cond.notify_all()

    def get(self, timeout: float) -> list[bytes]:
        """What came in, in order, as soon as something did; [] after ``timeout`` s or once
        closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._bodies or self._closed, timeout)
            if self._closed:
                return []
            bodies = list(self._bodies)
            self._bodies.clear()
            return bodies

    def _meanwhile(self) -> str:
        return "the subscription catches up when it listens again"

    def close(self) -> None:
        """Stop: a :meth:`get` in progress returns [] at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        super().close()


class NoteInbox(Inbox):
    """The notifications of one producer's channel (docs/internals/postgres.md)."""

    def __init__(self, db: Database, statements: StoreStatements, channel: str,
                 pending: Callable[[], Collection[str]]) -> None:
        super().__init__(db, notify_channel(statements.schema, channel),
                         "ivy-postgres-notifications")
        self._sql = statements
        self._pending = pending
        #: the last notification's seq received (None until the first connection)
        self._after: int | None = None

    def _connected(self, conn: psycopg.Connection[Any]) -> None:
        found: list[bytes] = []
        if self._after is None:  # the first connection: from now on
            row = conn.execute(self._sql.last_seq).fetchone()
            self._after = int(row[0]) if row else 0
        else:  # a reconnect: what was sent to the channel while nobody listened
            rows = conn.execute(self._sql.since, {"channel": self.channel,
                                                  "after": self._after}).fetchall()
            if rows:
                self._after = int(rows[-1][0])
            found.extend(bytes(r[1]) for r in rows)
        ids = list(self._pending())
        for start in range(0, len(ids), CATCH_UP_CHUNK):
            rows = conn.execute(self._sql.stored,
                                {"keys": ids[start:start + CATCH_UP_CHUNK]}).fetchall()
            found.extend(bytes(r[1]) for r in rows)
        self._deliver(found)

    def _received(self, conn: psycopg.Connection[Any], notes: list[psycopg.Notify]) -> None:
        named: list[str] = []
        keys: list[str] = []
        seqs: list[int] = []
        for note in notes:
            kind, _, rest = note.payload.partition(":")
            if kind == "r":
                keys.append(rest)
            elif kind == "n" and rest.isdigit():
                seqs.append(int(rest))
            else:
                continue
            named.append(note.payload)
        if not named:
            return
        rows = dict(conn.execute(self._sql.named, {"keys": keys, "seqs": seqs}).fetchall())
        if seqs:
            self._after = max(self._after or 0, *seqs)
        self._deliver([bytes(rows[p]) for p in named if p in rows])


class EventInbox(Inbox):
    """The task events of a schema (docs/internals/postgres.md)."""

    def __init__(self, db: Database, statements: StoreStatements) -> None:
        super().__init__(db, statements.events_channel, "ivy-postgres-events")
        self._sql = statements

    def _received(self, conn: psycopg.Connection[Any], notes: list[psycopg.Notify]) -> None:
        seqs = [int(n.payload[1:]) for n in notes
                if n.payload.startswith("#") and n.payload[1:].isdigit()]
        stored: dict[int, bytes] = {}
        if seqs:
            rows = conn.execute(self._sql.events, {"seqs": seqs}).fetchall()
            stored = {int(r[0]): bytes(r[1]) for r in rows}
        bodies: list[bytes] = []
        for note in notes:
            if note.payload.startswith("="):
                bodies.append(note.payload[1:].encode())
            elif note.payload[1:].isdigit() and int(note.payload[1:]) in stored:
                bodies.append(stored[int(note.payload[1:])])
        self._deliver(bodies)
