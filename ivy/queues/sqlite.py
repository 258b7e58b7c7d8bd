"""``sqlite:///path/ivy.db``: the embedded default queue backend, for several processes on one
machine. How it works: docs/internals/sqlite.md."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
from typing import Any, Self

from ivy._sqlite.database import POLL_INTERVAL, Database
from ivy._sqlite.wake import WakeListener, WakeSender
from ivy._sqlite.writer import Rows
from ivy.queues._batching import BatchSender, Outgoing
from ivy.queues.base import (
    DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_MAX_DELIVERIES,
    Consumer,
    DeadLetter,
    Delivery,
    QueueBackend,
    Rewrite,
    dead_letter_ttl_option,
    max_deliveries_option,
)

#: A consumer fetches more rows per query while a full batch lasts less than this (seconds).
BATCH_WORK = 0.005
#: ... up to this many times its prefetch.
FETCH_GROWTH = 8
#: Expired dead letters of a queue that each new dead letter of it deletes, at most.
EXPIRE_BATCH = 100
_clock = time.monotonic  # what consumers time their batches with (tests replace it)


#: An ack: the rows whose id and lease token match (one statement for many, through the
#: writer thread; looked up by id, whatever SQLite's version).
_ACK = Rows("DELETE FROM ivy_messages WHERE id IN (SELECT m.id FROM (VALUES {rows}) AS v "
            "JOIN ivy_messages AS m ON m.id = v.column1 AND m.token = v.column2)", "(?, ?)")


#: Messages sent (one statement for many: see ``_write``).
_INSERT = Rows("INSERT INTO ivy_messages (queue, body, priority, available_at, created) "
               "VALUES {rows}", "(?, ?, ?, ?, ?)")


def _micros(stamp: float) -> int:
    return int(stamp * 1_000_000)


def _parse_dead_id(text: str) -> tuple[int, int] | None:
    """``<row id>-<time in microseconds>``: a dead letter's id. SQLite gives the row id of a
    deleted last row to the next one, so the row id alone could name another letter later."""
    row, _, micros = text.partition("-")
    return (int(row), int(micros)) if row.isdigit() and micros.isdigit() else None


class SQLiteDelivery(Delivery):
    def __init__(self, backend: SQLiteQueueBackend, queue: str, row_id: int, body: bytes,
                 token: str, deliveries: int) -> None:
        super().__init__()
        self._backend = backend
        self._id = row_id
        self._token = token
        self.queue = queue
        self.body = body
        self.delivery_count = deliveries

    def _ack(self) -> None:
        """Handed to the database's writer thread (docs/internals/sqlite.md)."""
        self._backend.db.writer.submit(_ACK, (self._id, self._token))

    def _retry(self, delay: float, body: bytes | None) -> None:
        self._backend.db.execute(
            "UPDATE ivy_messages SET body = coalesce(?, body), available_at = ?, token = NULL "
            "WHERE id = ? AND token = ?",
            (body, time.time() + max(delay, 0.0), self._id, self._token))
        self._backend.waker.wake()

    def _dead_letter(self, reason: str) -> None:
        db = self._backend.db
        with db.write() as conn:
            moved = conn.execute(
                "DELETE FROM ivy_messages WHERE id = ? AND token = ? RETURNING queue, body",
                (self._id, self._token)).fetchone()
            if moved is not None:
                conn.execute(
                    "INSERT INTO ivy_dead_letters (queue, body, reason, time) VALUES (?, ?, ?, ?)",
                    (moved[0], moved[1], reason, time.time()))
                cutoff = self._backend.dead_letter_cutoff()
                if cutoff:  # the queue's oldest EXPIRE_BATCH, those expired: bounded work
                    conn.execute(
                        "DELETE FROM ivy_dead_letters WHERE id IN (SELECT id FROM "
                        "ivy_dead_letters WHERE queue = ? ORDER BY id LIMIT ?) AND time < ?",
                        (moved[0], EXPIRE_BATCH, cutoff))

    def _extend(self, seconds: float) -> None:
        self._backend.db.execute(
            "UPDATE ivy_messages SET available_at = ? WHERE id = ? AND token = ?",
            (time.time() + seconds, self._id, self._token))

    def _release(self) -> None:
        """Give an unstarted delivery back at once, without counting it as a delivery."""
        self._defer(0.0)

    def _defer(self, delay: float) -> None:
        """Put the row back, due ``delay`` s from now, without counting this delivery."""
        self._backend.db.execute(
            "UPDATE ivy_messages SET available_at = ?, token = NULL, deliveries = deliveries - 1 "
            "WHERE id = ? AND token = ?", (time.time() + max(delay, 0.0), self._id, self._token))
        self._backend.waker.wake()


class SQLiteConsumer(Consumer):
    def __init__(self, backend: SQLiteQueueBackend, queue: str, prefetch: int,
                 reserve_time: float) -> None:
        self._backend = backend
        self._queue = queue
        self._prefetch = max(1, prefetch)
        self._reserve = reserve_time
        self._buffer: deque[SQLiteDelivery] = deque()
        self._listener = WakeListener(backend.db.wake_dir("q"))
        self._closed = False
        self._lock = threading.Lock()  # several executor threads share one consumer
        self._size = self._prefetch  # rows asked for per fetch (see BATCH_WORK)
        self._full_at = 0.0  # when the last fetch came back full (monotonic), else 0
        # A lease token per fetch: a random prefix per consumer and a count. (A token from
        # secrets per fetch cost a system call, whose release of the GIL let the writer
        # thread take it for a switch interval: 12% of an executor's time in a burst.)
        self._token_prefix = secrets.token_hex(12)
        self._fetches = itertools.count()

    def _fetch(self) -> float | None:
        """Reserve up to ``_size`` rows; return the time the next one falls due if none."""
        started = _clock()
        if self._full_at:  # a full batch, now used up: size the next one by how fast
            took = started - self._full_at
            if took < BATCH_WORK:
                self._size = min(self._size * 2, self._prefetch * FETCH_GROWTH)
            elif took > 4 * BATCH_WORK:
                self._size = max(self._size // 2, self._prefetch)
        now = time.time()
        token = f"{self._token_prefix}{next(self._fetches):x}"
        db = self._backend.db
        size = self._size
        rows = db.returning(
            "UPDATE ivy_messages SET available_at = ?, token = ?, deliveries = deliveries + 1 "
            "WHERE id IN (SELECT id FROM ivy_messages WHERE queue = ? AND available_at <= ? "
            "ORDER BY priority DESC, id LIMIT ?) RETURNING id, body, deliveries, priority",
            (now + self._reserve, token, self._queue, now, size))
        self._full_at = started if len(rows) == size else 0.0
        if rows:
            rows.sort(key=lambda r: (-r[3], r[0]))
            self._buffer.extend(
                SQLiteDelivery(self._backend, self._queue, r[0], r[1], token, r[2]) for r in rows)
            return None
        due = db.conn().execute("SELECT min(available_at) FROM ivy_messages WHERE queue = ?",
                           (self._queue,)).fetchone()[0]
        return float(due) if due is not None else None

    def buffered(self) -> list[Delivery]:
        return list(tuple(self._buffer))  # a tuple of a deque is taken whole, under the GIL

    def get(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            return None
        try:
            return self._get(deadline)
        finally:
            self._lock.release()

    def _get(self, deadline: float) -> Delivery | None:
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            due = self._fetch()
            if self._buffer:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, POLL_INTERVAL)
            if due is not None:
                wait = min(wait, max(due - time.time(), 0.001))
            self._listener.wait(wait)
        return None

    def close(self) -> None:
        self._closed = True
        self._listener.interrupt()
        with self._lock:  # a get() in progress returns at once
            while self._buffer:
                self._buffer.popleft().release()
            self._listener.close()


class SQLiteQueueBackend(QueueBackend):
    """Dead letters past ``dead_letter_ttl`` are never listed, and each new dead letter of a
    queue deletes up to ``EXPIRE_BATCH`` of its expired ones."""

    def __init__(self, path: str = "ivy.db", *,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL) -> None:
        self.db = Database.shared(path)
        self._closed = False
        self.url = f"sqlite:///{self.db.path}"
        self.max_deliveries = max_deliveries_option(max_deliveries,
                                                    f"the SQLite queue {self.url}")
        self.dead_letter_ttl = dead_letter_ttl_option(dead_letter_ttl,
                                                      f"the SQLite queue {self.url}")
        self.waker = WakeSender(self.db.wake_dir("q"))
        self._sender = BatchSender(self._write, max_batch=100, max_backlog=100,
                                   name="ivy-sqlite-send")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        path = str(config.get("path") or "ivy.db")
        return cls(path, max_deliveries=config.get("max_deliveries", DEFAULT_MAX_DELIVERIES),
                   dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL))

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO ivy_messages (queue, body, priority, available_at, created) "
            "VALUES (?, ?, ?, ?, ?)", (queue, body, priority, now + max(delay, 0.0), now))
        self.waker.wake()

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.executemany(
                "INSERT INTO ivy_messages (queue, body, priority, available_at, created) "
                "VALUES (?, ?, ?, ?, ?)",
                [(queue, body, priority, now + max(delay, 0.0), now) for body in bodies])
        self.waker.wake()

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Asynchronous sends: a background thread writes what producers hand it meanwhile in
        one transaction; each future completes once its row is committed."""
        return self._sender.send(queue, bodies, priority=priority, delay=delay, route=route)

    def _write(self, batch: list[Outgoing]) -> list[BaseException | None]:
        """Few statements for the whole batch (up to 100 rows: 64 + 32 + 4): SQLite inserts
        them without the GIL, while the producer goes on. ``executemany`` stepped once per
        row, and each step let go of the GIL and waited to get it back from the producer's
        thread (a switch interval when that thread was busy sending)."""
        now = time.time()
        rows = [(i.queue, i.body, i.priority, now + max(i.delay, 0.0), now) for i in batch]
        with self.db.write() as conn:
            for sql, params in _INSERT.statements(rows):
                conn.execute(sql, params)
        self.waker.wake()
        return [None] * len(batch)

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return SQLiteConsumer(self, queue, prefetch, reserve_time)

    def oldest_age(self, queue: str) -> float | None:
        """From the due rows' ``available_at`` (a reserved row's is its lease's end)."""
        self.db.flush_writes()
        now = time.time()
        row = self.db.conn().execute(
            "SELECT min(available_at) FROM ivy_messages WHERE queue = ? AND available_at <= ?",
            (queue, now)).fetchone()
        return 0.0 if row is None or row[0] is None else max(now - float(row[0]), 0.0)

    def size(self, queue: str) -> int:
        self.db.flush_writes()  # this process's acks are counted
        row = self.db.conn().execute(
            "SELECT count(*) FROM ivy_messages WHERE queue = ?", (queue,)).fetchone()
        return int(row[0])

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = self.db.conn().execute(
            "SELECT queue, body, reason, time, id FROM ivy_dead_letters WHERE queue = ? "
            "ORDER BY id DESC LIMIT ?", (queue, limit)).fetchall()
        return self.live_dead_letters([
            DeadLetter(r[0], bytes(r[1]), r[2], r[3], f"{r[4]}-{_micros(r[3])}")
            for r in reversed(rows)])

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Atomic: one transaction deletes the dead letters and inserts the messages."""
        with self.db.write() as conn:
            if ids is None:
                rows = conn.execute("DELETE FROM ivy_dead_letters WHERE queue = ? "
                                    "RETURNING id, body", (queue,)).fetchall()
            else:
                wanted = {_parse_dead_id(i) for i in ids} - {None}
                candidates = conn.execute(
                    "SELECT id, time FROM ivy_dead_letters WHERE queue = ? AND id IN "
                    "(SELECT value FROM json_each(?))",
                    (queue, json.dumps(sorted({w[0] for w in wanted if w})))).fetchall()
                chosen = [r[0] for r in candidates if (r[0], _micros(r[1])) in wanted]
                rows = conn.execute(
                    "DELETE FROM ivy_dead_letters WHERE id IN (SELECT value FROM json_each(?)) "
                    "RETURNING id, body", (json.dumps(chosen),)).fetchall()
            now = time.time()
            back = []
            for _, body in sorted(rows):  # RETURNING has no order: oldest first
                body, priority = rewrite(bytes(body)) if rewrite else (bytes(body), None)
                back.append((queue, body, priority or 0, now, now))
            conn.executemany(
                "INSERT INTO ivy_messages (queue, body, priority, available_at, created) "
                "VALUES (?, ?, ?, ?, ?)", back)
        if back:
            self.waker.wake()
        return len(back)

    def purge_dead(self, queue: str) -> int:
        with self.db.write() as conn:
            return conn.execute("DELETE FROM ivy_dead_letters WHERE queue = ?",
                                (queue,)).rowcount

    def queues(self) -> list[str]:
        rows = self.db.conn().execute(
            "SELECT queue FROM ivy_messages UNION SELECT queue FROM ivy_dead_letters").fetchall()
        return sorted(r[0] for r in rows)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sender.close()
        self.waker.close()
        self.db.close()
