"""``sqlite:///path/ivy.db``: the embedded default notifier, for processes on one machine. How it
works: docs/internals/sqlite.md."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Self

from ivy._sqlite.database import POLL_INTERVAL, Database
from ivy._sqlite.wake import WakeListener, WakeSender
from ivy._sqlite.writer import Rows
from ivy.notifiers.base import (
    HOLD_EARLY,
    Notifier,
    Subscription,
    beside_key,
    gcra_reserve,
    gcra_step,
    hold_ttl,
)

#: A notification (one statement for many, through the writer thread; a second final one
#: of a call is ignored: the first result wins, except beside it for a nonce the first does
#: not carry, :func:`ivy.notifiers.base.beside`). Its values: channel; call id, call id, nonce,
#: call id, nonce, call id, the key beside; body, final, created.
_INSERT = Rows(
    "INSERT OR IGNORE INTO ivy_notifications (channel, call_id, body, final, created) "
    "VALUES {rows}",
    "(?, CASE WHEN NOT EXISTS (SELECT 1 FROM ivy_notifications WHERE final = 1 AND call_id = ?)"
    " THEN ? WHEN ? IS NULL OR EXISTS (SELECT 1 FROM ivy_notifications WHERE final = 1"
    " AND call_id = ? AND instr(body, ?) > 0) THEN ? ELSE ? END, ?, ?, ?)")

PRUNE_EVERY = 60.0
#: Longest publish() waits for the writer thread to commit its notification.
WRITE_TIMEOUT = 60.0
#: Seconds an event row is kept: long enough for any open subscription to read it.
EVENTS_TTL = 60.0
KEYS_SCHEMA = ("CREATE TABLE IF NOT EXISTS ivy_keys (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
               "expires REAL NOT NULL)")


class _RowReader(Subscription):
    """Reads the rows of one query past a cursor, in order, waiting on wake-ups between polls
    (what notification and event subscriptions share)."""

    _query = ""
    #: the table read: what it holds from now on (its rows past their highest ``seq``)
    _table = ""

    def __init__(self, notifier: SQLiteNotifier, wake: str) -> None:
        self._notifier = notifier
        self._listener = WakeListener(notifier.db.wake_dir(wake))
        self._cursor: int = notifier.db.conn().execute(
            f"SELECT coalesce(max(seq), 0) FROM {self._table}").fetchone()[0]  # noqa: S608 - a class constant
        self._closed = False

    def _params(self) -> tuple[Any, ...]:
        return (self._cursor,)

    def _read(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        conn = self._notifier.db.conn()
        while not self._closed:
            rows = conn.execute(self._query, self._params()).fetchall()
            if rows:
                self._cursor = rows[-1][0]
                return [bytes(r[1]) for r in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._listener.wait(min(remaining, POLL_INTERVAL))
        if self._closed:
            self._listener.close()
        return []

    def close(self) -> None:
        self._closed = True
        self._listener.interrupt()


class SQLiteSubscription(_RowReader):
    _query = ("SELECT seq, body FROM ivy_notifications WHERE channel = ? AND seq > ? "
              "ORDER BY seq LIMIT 1000")
    _table = "ivy_notifications"

    def __init__(self, notifier: SQLiteNotifier, channel: str,
                 pending: Callable[[], Collection[str]]) -> None:
        super().__init__(notifier, "n")
        self._channel = channel
        self._pending = pending
        # every row of the channel stored from now on is read (statuses and progress too);
        # what was stored before is caught up at the first get(), final results only
        self._caught_up = False

    def _params(self) -> tuple[Any, ...]:
        return (self._channel, self._cursor)

    def _catch_up(self) -> list[bytes]:
        conn = self._notifier.db.conn()
        ids = list(self._pending())
        found: list[bytes] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.extend(bytes(r[0]) for r in conn.execute(
                "SELECT body FROM ivy_notifications WHERE final = 1 AND seq <= ? AND call_id "  # noqa: S608 - only placeholders
                f"IN ({marks})", (self._cursor, *chunk)))
        return found

    def get(self, timeout: float) -> list[bytes]:
        if not self._caught_up:
            self._caught_up = True
            found = self._catch_up()
            if found:
                return found
        return self._read(timeout)


class SQLiteEventSubscription(_RowReader):
    """Reads the ``ivy_events`` rows added after it opened, in order."""

    _query = "SELECT seq, body FROM ivy_events WHERE seq > ? ORDER BY seq LIMIT 1000"
    _table = "ivy_events"

    def __init__(self, notifier: SQLiteNotifier) -> None:
        super().__init__(notifier, "e")

    def get(self, timeout: float) -> list[bytes]:
        return self._read(timeout)


class SQLiteNotifier(Notifier):
    def __init__(self, path: str = "ivy.db", *, ttl: float = 86400.0) -> None:
        self.db = Database.shared(path)
        self._closed = False
        self.url = f"sqlite:///{self.db.path}"
        self.ttl = ttl
        self.waker = WakeSender(self.db.wake_dir("n"))
        self._event_waker = WakeSender(self.db.wake_dir("e"))
        self._last_prune = 0.0
        self._last_event_prune = 0.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(str(config.get("path") or "ivy.db"), ttl=float(config.get("ttl", 86400.0)))

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool,
                nonce: str | None = None) -> None:
        """Stored through the database's writer thread, and waited for."""
        self.db.writer.write(*self._insert(channel, call_id, body, final, nonce),
                             wake=self.waker, timeout=WRITE_TIMEOUT)
        self._prune()

    def publish_then(self, channel: str, call_id: str, body: bytes, *, final: bool,
                     then: Callable[[], None], nonce: str | None = None) -> None:
        """Handed to the database's writer thread, which stores it with what else is waiting
        and calls ``then`` after the commit, from its own thread (see
        :mod:`ivy._sqlite.writer`: a write that keeps failing holds ``then`` back)."""
        self.db.writer.submit(*self._insert(channel, call_id, body, final, nonce),
                              wake=self.waker, then=then)
        self._prune()

    @staticmethod
    def _insert(channel: str, call_id: str, body: bytes, final: bool, nonce: str | None
                ) -> tuple[Rows, tuple[Any, ...]]:
        mark = nonce.encode() if final and nonce is not None else None
        return _INSERT, (channel, call_id, call_id, mark, call_id, mark, call_id,
                         call_id if mark is None else beside_key(call_id, str(nonce)),
                         body, int(final), time.time())

    def _prune(self) -> None:
        now = time.time()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            self.db.writer.submit("DELETE FROM ivy_notifications WHERE created < ?",
                                  (now - self.ttl,))

    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        return SQLiteSubscription(self, channel, pending)

    def stored(self, call_id: str, nonce: str | None = None) -> bytes | None:
        self.db.flush_writes()  # what a worker of this process recorded is seen
        key = call_id if nonce is None else beside_key(call_id, nonce)
        row = self.db.conn().execute(  # the one beside it first
            "SELECT body FROM ivy_notifications WHERE final = 1 AND call_id IN (?, ?) "
            "ORDER BY call_id = ? LIMIT 1", (call_id, key, call_id)).fetchone()
        return None if row is None else bytes(row[0])

    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute("DELETE FROM ivy_workers WHERE expires <= ?", (now,))
            conn.execute("INSERT OR REPLACE INTO ivy_workers (name, info, expires) "
                         "VALUES (?, ?, ?)", (name, json.dumps(dict(info)), now + ttl))

    def remove_worker(self, name: str) -> None:
        self.db.execute("DELETE FROM ivy_workers WHERE name = ?", (name,))

    def workers(self) -> list[dict[str, Any]]:
        rows = self.db.conn().execute(
            "SELECT info FROM ivy_workers WHERE expires > ? ORDER BY name", (time.time(),))
        return [json.loads(r[0]) for r in rows]

    def publish_event(self, body: bytes) -> None:
        self.publish_events([body])

    def publish_events(self, bodies: list[bytes]) -> None:
        if not bodies:
            return
        now = time.time()
        conn = self.db.conn()
        with self.db.write(conn):  # one commit for the batch
            conn.executemany("INSERT INTO ivy_events (body, created) VALUES (?, ?)",
                             [(body, now) for body in bodies])
        self._event_waker.wake()
        if now - self._last_event_prune > EVENTS_TTL / 4:
            self._last_event_prune = now
            self.db.execute("DELETE FROM ivy_events WHERE created < ?", (now - EVENTS_TTL,))

    def subscribe_events(self) -> Subscription:
        return SQLiteEventSubscription(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.waker.close()
        self._event_waker.close()
        self.db.close()

    # -- workflow store (groups/chords) --
    # Tables ivy_workflow_members(key, idx, value, expires) and ivy_workflow_counts(key, count,
    # expires), created on first use. One write transaction inserts the member (INSERT OR
    # IGNORE: the first record of a member wins) and counts it in the key's counter row, so a
    # join costs the same for the 16,000th member as for the first (a COUNT(*) per record
    # made a group of 16,000 take 36 s); the count includes the record, whichever process
    # asks. A key lives until its counter's time (each record pushes it out, as the Redis
    # notifier's EXPIRE does); its members go with it. A key recorded before the counter
    # existed is counted once, when its counter row is made.

    _WORKFLOW_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS ivy_workflow_members (key TEXT NOT NULL, idx INTEGER NOT "
        "NULL, value BLOB NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, idx))",
        "CREATE TABLE IF NOT EXISTS ivy_workflow_counts (key TEXT PRIMARY KEY, "
        "count INTEGER NOT NULL, expires REAL NOT NULL)")

    def _workflow_table(self) -> None:
        if not getattr(self, "_workflow_ready", False):
            with self.db.write() as conn:
                for statement in self._WORKFLOW_SCHEMA:
                    conn.execute(statement)
            self._workflow_ready = True

    def workflow_record(self, key: str, index: int, value: bytes,
                        ttl: float) -> tuple[bool, int]:
        self._workflow_table()
        now = time.time()
        expires = now + ttl
        with self.db.write() as conn:
            counted = conn.execute("SELECT count FROM ivy_workflow_counts WHERE key = ? AND "
                                   "expires > ?", (key, now)).fetchone()
            if counted is None:  # a new key (or one from before the counter): count it once
                conn.execute("DELETE FROM ivy_workflow_counts WHERE key = ?", (key,))
                conn.execute("INSERT INTO ivy_workflow_counts (key, count, expires) "
                             "SELECT ?, count(*), ? FROM ivy_workflow_members WHERE key = ? "
                             "AND expires > ?", (key, expires, key, now))
            inserted = conn.execute(
                "INSERT OR IGNORE INTO ivy_workflow_members (key, idx, value, expires) "
                "VALUES (?, ?, ?, ?)", (key, index, value, expires)).rowcount == 1
            count = conn.execute(
                "UPDATE ivy_workflow_counts SET count = count + ?, expires = max(expires, ?) "
                "WHERE key = ? RETURNING count", (int(inserted), expires, key)).fetchone()[0]
            if now - getattr(self, "_workflow_pruned", 0.0) > PRUNE_EVERY:
                self._workflow_pruned = now
                conn.execute("DELETE FROM ivy_workflow_members WHERE key IN (SELECT key FROM "
                             "ivy_workflow_counts WHERE expires <= ?)", (now,))
                conn.execute("DELETE FROM ivy_workflow_counts WHERE expires <= ?", (now,))
                conn.execute("DELETE FROM ivy_workflow_members WHERE expires <= ? AND key NOT "
                             "IN (SELECT key FROM ivy_workflow_counts)", (now,))
        return inserted, int(count)

    def workflow_members(self, key: str) -> dict[int, bytes]:
        self._workflow_table()
        rows = self.db.conn().execute(
            "SELECT m.idx, m.value FROM ivy_workflow_members AS m JOIN ivy_workflow_counts AS c "
            "ON c.key = m.key WHERE m.key = ? AND c.expires > ?", (key, time.time()))
        return {int(i): bytes(v) for i, v in rows}

    # -- keys, claims and counters (schedules, unique, cancel, rate limits) --

    _keys_ready = False

    def _keys(self) -> sqlite3.Connection:
        conn = self.db.conn()
        if not self._keys_ready:
            with self.db.write(conn):
                conn.execute(KEYS_SCHEMA)
            self._keys_ready = True
        return conn

    def claim_key(self, key: str, value: str, ttl: float) -> str | None:
        now = time.time()
        conn = self._keys()
        with self.db.write(conn):
            row = conn.execute("SELECT value FROM ivy_keys WHERE key = ? AND expires > ?",
                               (key, now)).fetchone()
            if row is not None:
                return str(row[0])
            conn.execute("INSERT OR REPLACE INTO ivy_keys (key, value, expires) VALUES (?, ?, ?)",
                         (key, value, now + ttl))
            if now - self._last_keys_prune > PRUNE_EVERY:
                self._last_keys_prune = now
                conn.execute("DELETE FROM ivy_keys WHERE expires <= ?", (now,))
            return None

    _last_keys_prune = 0.0

    def get_keys(self, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        conn = self._keys()
        now = time.time()
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            found.update((str(k), str(v)) for k, v in conn.execute(
                f"SELECT key, value FROM ivy_keys WHERE key IN ({marks}) AND expires > ?",  # noqa: S608 - only placeholders
                [*chunk, now]))
        return [found.get(k) for k in keys]

    def release_key(self, key: str, value: str, ttl: float, new_value: str | None = None
                    ) -> bool:
        now = time.time()
        conn = self._keys()
        with self.db.write(conn):
            if ttl <= 0:
                cur = conn.execute("DELETE FROM ivy_keys WHERE key = ? AND value = ? "
                                   "AND expires > ?", (key, value, now))
            else:
                cur = conn.execute("UPDATE ivy_keys SET expires = ?, value = ? WHERE key = ? "
                                   "AND value = ? AND expires > ?",
                                   (now + ttl, value if new_value is None else new_value, key,
                                    value, now))
            return cur.rowcount > 0

    def extend_key(self, key: str, value: str, ttl: float) -> bool:
        now = time.time()
        conn = self._keys()
        with self.db.write(conn):
            cur = conn.execute("UPDATE ivy_keys SET expires = max(expires, ?) WHERE key = ? "
                               "AND value = ? AND expires > ?", (now + ttl, key, value, now))
            return cur.rowcount > 0

    def reserve_rate_slot(self, key: str, interval: float, burst: int, holder: str) -> float:
        conn = self._keys()
        hold = f"{key}:{holder}"
        with self.db.write(conn):
            now = time.time()  # inside the transaction: writers take turns on one clock
            held = conn.execute("SELECT value FROM ivy_keys WHERE key = ? AND expires > ?",
                                (hold, now)).fetchone()
            if held is not None:  # a slot reserved before: wait for it, or use it up
                left = float(held[0]) - now
                if left > HOLD_EARLY:
                    return left
                conn.execute("DELETE FROM ivy_keys WHERE key = ?", (hold,))
                return 0.0
            row = conn.execute("SELECT value FROM ivy_keys WHERE key = ? AND expires > ?",
                               (key, now)).fetchone()
            tat, wait = gcra_reserve(None if row is None else float(row[0]), now, interval,
                                     burst)
            conn.execute("INSERT OR REPLACE INTO ivy_keys (key, value, expires) VALUES (?, ?, ?)",
                         (key, repr(tat), tat + interval + 1.0))
            if wait > 0:
                conn.execute("INSERT OR REPLACE INTO ivy_keys (key, value, expires) "
                             "VALUES (?, ?, ?)", (hold, repr(now + wait), now + hold_ttl(wait)))
            return wait

    def take_rate_slot(self, key: str, interval: float, burst: int) -> float:
        conn = self._keys()
        with self.db.write(conn):
            now = time.time()  # inside the transaction: writers take turns on one clock
            row = conn.execute("SELECT value FROM ivy_keys WHERE key = ? AND expires > ?",
                               (key, now)).fetchone()
            tat, wait = gcra_step(None if row is None else float(row[0]), now, interval, burst)
            if wait == 0.0:
                conn.execute("INSERT OR REPLACE INTO ivy_keys (key, value, expires) "
                             "VALUES (?, ?, ?)", (key, repr(tat), tat + interval + 1.0))
            return wait
