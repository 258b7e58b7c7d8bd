"""``postgresql://`` (and ``postgres://``) as a QUEUE URL: ivy's queues in PostgreSQL tables
(``pip install 'ivy-queue[postgres]'``). How it works: docs/internals/postgres.md."""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
from typing import Any, Self

from ivy._postgres import commits, queries
from ivy._postgres.acks import Ack, Acker
from ivy._postgres.connection import (
    Database,
    PostgresError,
    PostgresUnavailable,
    Settings,
    parse_url,
)
from ivy._postgres.wake import Wakeups
from ivy.errors import ConfigurationError, PublishError
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

log = logging.getLogger("ivy.postgres")

#: Expired dead letters of a queue that each new dead letter of it deletes, at most.
EXPIRE_BATCH = 100
#: Longest wait between tries of a consumer that cannot reach the server.
RETRY_MAX = 2.0
#: Seconds a send keeps trying while a server that answered before is unreachable.
DEFAULT_PUBLISH_TIMEOUT = 15.0


def _seconds(value: Any, name: str, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{name}={value!r} for {what}: expected a number of seconds "
                                 f"> 0, such as ?{name}={DEFAULT_PUBLISH_TIMEOUT:g}")
    return seconds


class PostgresDelivery(Delivery):
    """One leased row; every operation checks the lease token, so a holder whose lease ran
    out changes nothing."""

    def __init__(self, consumer: PostgresConsumer, row_id: int, body: bytes, token: str,
                 deliveries: int) -> None:
        super().__init__()
        self._backend = consumer.backend
        self._id, self._token = row_id, token
        self.queue = consumer.queue
        self.body = body
        self.delivery_count = deliveries

    def _ack(self) -> None:
        """Handed to the backend's acker, which deletes the row with the others waiting: the
        ack returns at once (a lease that ran out meanwhile is logged by the acker)."""
        self._backend.acker.submit(Ack(self.queue, self._id, self._token))

    @property
    def _key(self) -> dict[str, object]:
        """The row and its lease token, as the statements' parameters."""
        return {"id": self._id, "token": self._token}

    def _lost(self, what: str) -> None:
        log.warning("%s of a message of %s (row %s) skipped: its lease ran out and another "
                    "delivery of it is under way", what, self.queue, self._id)

    def _put_back(self, delay: float, body: bytes | None, uncount: int) -> None:
        b = self._backend
        with b.db.connection() as conn:
            params = {**self._key, "body": body, "delay": max(float(delay), 0.0),
                      "uncount": uncount, "channel": b.sql.channel}
            if not conn.execute(b.sql.put_back, params).rowcount:
                self._lost("putting back")

    def _retry(self, delay: float, body: bytes | None) -> None:
        self._put_back(delay, body, 0)

    def _defer(self, delay: float) -> None:
        """Put the row back, due ``delay`` s from now, without counting this delivery."""
        self._put_back(delay, None, 1)

    def _release(self) -> None:
        self._defer(0.0)

    def _dead_letter(self, reason: str) -> None:
        b = self._backend
        with b.db.connection() as conn, conn.transaction():
            moved = conn.execute(b.sql.dead_letter, {**self._key, "reason": reason}).fetchone()
            if moved is None:
                self._lost("dead-lettering")
            elif b.dead_letter_ttl is not None:  # bounded work: the queue's oldest few
                conn.execute(b.sql.expire_some, {"queue": self.queue, "limit": EXPIRE_BATCH,
                                                 "ttl": b.dead_letter_ttl})

    def _extend(self, seconds: float) -> None:
        with self._backend.db.connection() as conn:
            params = {**self._key, "seconds": float(seconds)}
            if not conn.execute(self._backend.sql.extend, params).rowcount:
                log.warning("the lease of a message of %s (row %s) ran out before it was "
                            "extended; another worker may run it too", self.queue, self._id)


class PostgresConsumer(Consumer):
    """Fetches up to ``prefetch`` rows at a time for executor threads that share it; waits
    for a notification, the next row falling due, or ``poll_interval``, whichever is first."""

    def __init__(self, backend: PostgresQueueBackend, queue: str, prefetch: int,
                 reserve_time: float) -> None:
        self.backend = backend
        self.queue = queue
        self._prefetch = max(1, prefetch)
        self._lease = float(reserve_time)
        self._buffer: deque[PostgresDelivery] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._failing = False
        self._token_prefix = secrets.token_hex(12)
        self._fetches = itertools.count()
        backend.wakeups.start()

    def buffered(self) -> list[Delivery]:
        """Leased rows not handed out yet (the heartbeat extends their leases too)."""
        return list(tuple(self._buffer))  # a tuple of a deque is taken whole, under the GIL

    def get(self, timeout: float) -> Delivery | None:
        """The next leased row, or None once ``timeout`` s passed (or the consumer closed)."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(timeout, 0.001)):
            return None
        try:
            return self._get(deadline)
        finally:
            self._lock.release()

    def _get(self, deadline: float) -> Delivery | None:
        wakeups = self.backend.wakeups
        pause = 0.05
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            seen = wakeups.mark(self.queue)
            try:
                due = self._fetch()
                self._recovered()
                pause = 0.05
            except PostgresError as exc:
                self._failed(exc)
                due, pause = pause, min(pause * 2, RETRY_MAX)
            if self._buffer:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, self.backend.settings.poll_interval)
            if due is not None:
                wait = min(wait, max(due, 0.001))
            wakeups.wait(self.queue, seen, wait)
        return None

    def _fetch(self) -> float | None:
        """Lease up to ``prefetch`` due rows; if none, the seconds until a row falls due
        (None: the queue is empty)."""
        b = self.backend
        token = f"{self._token_prefix}{next(self._fetches):x}"
        with b.db.connection() as conn:
            rows = conn.execute(b.sql.fetch, {"queue": self.queue, "size": self._prefetch,
                                              "lease": self._lease, "token": token}).fetchall()
            if not rows:
                row = conn.execute(b.sql.next_due, {"queue": self.queue}).fetchone()
                return None if row is None or row[0] is None else float(row[0])
        rows.sort(key=lambda r: (-r[3], r[0]))  # RETURNING keeps no order
        self._buffer.extend(PostgresDelivery(self, r[0], bytes(r[1]), token, r[2])
                            for r in rows)
        return None

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("consumer of %s: %s; retrying", self.queue, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("consumer of %s on %s: PostgreSQL answers again", self.queue,
                        self.backend.url)

    def close(self) -> None:
        """Stop fetching and give back the prefetched, unstarted rows at once."""
        self._closed = True
        self.backend.wakeups.poke(self.queue)
        with self._lock:  # a get() in progress returns at once
            while self._buffer:
                delivery = self._buffer.popleft()
                try:
                    delivery.release()
                except PostgresError as exc:
                    log.warning("consumer of %s: a prefetched message could not be given "
                                "back (%s); it comes back when its lease ends", self.queue, exc)


class PostgresQueueBackend(QueueBackend):
    """The PostgreSQL queue. ``url`` is libpq's URL with ivy's options (``schema``,
    ``max_deliveries``, ``dead_letter_ttl``, ``poll_interval``, ``pool_size``); keyword
    arguments given (not None) win over the URL's. Nothing connects until first use.

    Raises:
        ivy.ConfigurationError: a malformed URL or option (the message shows the form).
    """

    def __init__(self, url: str, *, schema: str | None = None,
                 max_deliveries: int | str | None = None,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL,
                 poll_interval: float | str | None = None,
                 pool_size: int | str | None = None) -> None:
        self.settings: Settings = parse_url(url, {"schema": schema,
                                                  "poll_interval": poll_interval,
                                                  "pool_size": pool_size})
        self.url = self.settings.url
        what = f"the PostgreSQL queue {self.url}"
        options = self.settings.options
        if max_deliveries is None:
            max_deliveries = options.get("max_deliveries", DEFAULT_MAX_DELIVERIES)
        self.max_deliveries = max_deliveries_option(max_deliveries, what)
        if "dead_letter_ttl" in options and dead_letter_ttl == DEFAULT_DEAD_LETTER_TTL:
            dead_letter_ttl = options["dead_letter_ttl"]
        self.dead_letter_ttl = dead_letter_ttl_option(dead_letter_ttl, what)
        #: seconds a send keeps trying while a server that answered before is unreachable
        #: (a restart, a failover), before it fails with PublishError
        self.publish_timeout = _seconds(options.get("publish_timeout", DEFAULT_PUBLISH_TIMEOUT),
                                        "publish_timeout", what)
        self.db = Database(self.settings)
        self.sql = queries.Statements(self.settings.schema)
        self.wakeups = Wakeups(self.db, self.sql.channel)
        #: writes the deliveries' acks in batches, on a thread of its own
        self.acker = Acker(self.db, self.sql.ack)
        self._sender = BatchSender(self._write, max_batch=500, max_backlog=1000,
                                   name="ivy-postgres-send")
        #: follows the transactions of callers' connections (send_within)
        self._commits = commits.CommitWatcher(self.db)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Build from the config of a URL or dict (``{"type": "postgresql", "url": ...}``,
        options beside it win over the URL's)."""
        url = config.get("url")
        if not isinstance(url, str):
            raise ConfigurationError(
                f"a PostgreSQL queue needs a 'url', such as {{'type': 'postgresql', 'url': "
                f"'postgresql://app@db:5432/app'}}: got {sorted(config)}")
        return cls(url, schema=config.get("schema"),
                   max_deliveries=config.get("max_deliveries"),
                   dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL),
                   poll_interval=config.get("poll_interval"), pool_size=config.get("pool_size"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} schema={self.settings.schema}>"

    def migrate(self) -> tuple[int, list[int]]:
        """Create or upgrade the schema now (``ivy migrate``); the version, and the versions
        applied. A schema newer than this ivy raises
        :class:`ivy._postgres.schema.SchemaTooNew`."""
        return self.db.migrate()

    # -- publishing ----------------------------------------------------------------------------

    def _insert(self, rows: list[queries.Row]) -> None:
        """Write ``rows``; while a server that answered before cannot be reached, try again
        for up to ``publish_timeout`` s (a restart takes a fraction of a second), then fail
        with PublishError. A server never reached fails at once (the connect timeout)."""
        # once the server answered, the whole send is bounded by publish_timeout: a pool that
        # cannot make a connection is waited for until then, not for its own timeout (the
        # connect timeout + 5 s) on every try
        pause = 0.05
        deadline = time.monotonic() + self.publish_timeout if self.db.reached else None
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.01)
            try:
                with self.db.connection(wait, direct=True) as conn:
                    queries.insert(conn, self.sql, rows)
                return
            except PostgresUnavailable as exc:
                now = time.monotonic()
                deadline = deadline or now + self.publish_timeout
                if not self.db.reached or now + pause > deadline:
                    raise self._not_taken(rows, exc) from exc
                log.warning("PostgreSQL queue %s: %s; sending again in %.2f s", self.url, exc,
                            pause)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            except PostgresError as exc:
                raise self._not_taken(rows, exc) from exc

    @staticmethod
    def _not_taken(rows: list[queries.Row], exc: PostgresError) -> PublishError:
        names = sorted({r[0] for r in rows})
        return PublishError(f"the PostgreSQL queue did not take {len(rows)} message(s) for "
                            f"queue(s) {', '.join(map(repr, names))}: {exc}")

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        """Insert one message (``route`` is ignored); :class:`ivy.PublishError` if it was
        not written."""
        self._insert([(queue, body, priority, delay)])

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        """One statement, one transaction for all of ``bodies``."""
        self._insert([(queue, body, priority, delay) for body in bodies])

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Asynchronous sends: a background thread inserts what producers hand it meanwhile
        in one statement; each future completes once its row is committed."""
        return self._sender.send(queue, bodies, priority=priority, delay=delay, route=route)

    def send_within(self, connection: Any, queue: str, bodies: list[bytes], *,
                    priority: int = 0, delay: float = 0.0) -> Future[None]:
        """Write ``bodies`` with the caller's psycopg connection, in its transaction
        (:mod:`ivy.transactional`): the future completes when that transaction commits, or
        fails with :class:`ivy.errors.TransactionRolledBack` when it rolls back. Raises
        :class:`ivy.PublishError` if the rows could not be written."""
        rows = [(queue, body, priority, delay) for body in bodies]
        return self._commits.follow(commits.write_within(self.db, self.sql, connection, rows))

    async def send_within_async(self, connection: Any, queue: str, bodies: list[bytes], *,
                                priority: int = 0, delay: float = 0.0) -> Future[None]:
        """:meth:`send_within` with a ``psycopg.AsyncConnection``."""
        rows = [(queue, body, priority, delay) for body in bodies]
        xid = await commits.write_within_async(self.db, self.sql, connection, rows)
        return self._commits.follow(xid)

    def _write(self, batch: list[Outgoing]) -> list[BaseException | None]:
        try:
            self._insert([(i.queue, i.body, i.priority, i.delay) for i in batch])
        except PublishError as exc:
            return [exc] * len(batch)
        return [None] * len(batch)

    # -- consuming and managing ----------------------------------------------------------------

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        """A consumer of ``queue`` leasing up to ``prefetch`` rows for ``reserve_time`` s."""
        return PostgresConsumer(self, queue, prefetch, reserve_time)

    def oldest_age(self, queue: str) -> float | None:
        """From the due rows' ``available_at`` (a leased row's is its lease's end), by the
        server's clock."""
        self.acker.flush()  # what this process acked is not counted
        with self.db.connection() as conn:
            row = conn.execute(self.sql.oldest_age, {"queue": queue}).fetchone()
        return 0.0 if row is None or row[0] is None else max(float(row[0]), 0.0)

    def size(self, queue: str) -> int:
        """Messages of ``queue`` waiting, delayed or leased."""
        self.acker.flush()  # what this process acked is not counted
        with self.db.connection() as conn:
            row = conn.execute(self.sql.size, {"queue": queue}).fetchone()
        return int(row[0]) if row else 0

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Those within ``dead_letter_ttl`` by the server's clock, oldest first."""
        with self.db.connection() as conn:
            rows = conn.execute(self.sql.dead_letters, {
                "queue": queue, "limit": limit, "ttl": self.dead_letter_ttl}).fetchall()
        return [DeadLetter(r[0], bytes(r[1]), r[2], float(r[3]), str(r[4]))
                for r in reversed(rows)]

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Atomic: one transaction deletes the dead letters and inserts the messages, oldest
        first, with the priority ``rewrite`` gives, else the one they had."""
        with self.db.connection() as conn, conn.transaction():
            self._expire(conn, queue)
            if ids is None:
                rows = conn.execute(self.sql.take_dead, {"queue": queue}).fetchall()
            else:
                wanted = sorted({int(i) for i in ids if str(i).isdigit()})
                rows = conn.execute(self.sql.take_dead_ids,
                                    {"queue": queue, "ids": wanted}).fetchall()
            back: list[queries.Row] = []
            for _, body, priority in sorted(rows):
                new, chosen = rewrite(bytes(body)) if rewrite else (bytes(body), None)
                back.append((queue, new, priority if chosen is None else chosen, 0.0))
            queries.insert(conn, self.sql, back)
        return len(back)

    def _expire(self, conn: Any, queue: str) -> None:
        if self.dead_letter_ttl is not None:
            conn.execute(self.sql.expire_all, {"queue": queue, "ttl": self.dead_letter_ttl})

    def purge_dead(self, queue: str) -> int:
        """Expired dead letters are deleted too, not counted."""
        with self.db.connection() as conn, conn.transaction():
            self._expire(conn, queue)
            return int(conn.execute(self.sql.purge_dead, {"queue": queue}).rowcount)

    def queues(self) -> list[str]:
        """Queue names with messages or dead letters."""
        self.acker.flush()
        with self.db.connection() as conn:
            rows = conn.execute(self.sql.queues).fetchall()
        return sorted(r[0] for r in rows)

    def close(self) -> None:
        """Write what is being sent and acked, stop listening and close the connections."""
        self._sender.close()
        self.acker.close()
        self._commits.close()
        self.wakeups.close()
        self.db.close()
