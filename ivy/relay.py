"""The relay (``ivy relay``): moves committed messages of PostgreSQL queues to another queue
backend, a transactional outbox for any broker (docs/internals/postgres.md, "The relay")."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ivy.queues.base import QueueBackend

if TYPE_CHECKING:  # imported when a relay is made: `import ivy.cli` needs no psycopg
    from ivy.queues.postgres import PostgresQueueBackend

log = logging.getLogger("ivy.relay")

#: Most rows of one queue moved per round and transaction.
DEFAULT_BATCH = 500
#: Longest wait for the target's confirms of one batch.
CONFIRM_TIMEOUT = 60.0


class Relay:
    """Moves the committed messages of ``queues`` (None: every queue found in the source's
    tables, looked up each round) from the PostgreSQL queue ``source`` to ``target``."""

    def __init__(self, source: PostgresQueueBackend, target: QueueBackend,
                 queues: Sequence[str] | None = None, *, batch: int = DEFAULT_BATCH,
                 confirm_timeout: float = CONFIRM_TIMEOUT) -> None:
        from ivy.queues.postgres import PostgresQueueBackend

        if not isinstance(source, PostgresQueueBackend):
            raise TypeError(f"the relay reads a PostgreSQL queue, not {source!r}")
        if batch < 1:
            raise ValueError(f"batch {batch!r} must be a whole number >= 1")
        self.source = source
        self.target = target
        self.queues = list(queues) if queues else None
        self.batch = batch
        self.confirm_timeout = confirm_timeout
        self._stop = threading.Event()
        #: messages moved so far
        self.moved = 0
        from psycopg import sql

        composed = {"messages": sql.Identifier(source.settings.schema, "messages")}
        self._take = sql.SQL(
            "SELECT id, body, priority, greatest(extract(epoch FROM available_at - now()), 0) "
            "FROM {messages} WHERE queue = %(queue)s ORDER BY id LIMIT %(limit)s "
            "FOR UPDATE SKIP LOCKED").format(**composed)
        self._delete = sql.SQL("DELETE FROM {messages} WHERE id = ANY(%(ids)s::bigint[])"
                               ).format(**composed)

    def stop(self) -> None:
        """Make :meth:`run` return after the round in progress (from any thread)."""
        self._stop.set()
        self.source.wakeups.poke(None)

    def run(self) -> None:
        """Move messages until :meth:`stop`, waiting for wake-ups between rounds."""
        wakeups = self.source.wakeups
        wakeups.start()
        while not self._stop.is_set():
            queues = self._queues()
            marks = {q: wakeups.mark(q) for q in queues}
            moved = 0
            for queue in queues:
                try:
                    moved += self.move(queue)
                except Exception as exc:  # a target or a database down: try again later
                    log.warning("relay: moving queue %r to %s failed (%s); the messages stay "
                                "in PostgreSQL and are tried again", queue, self.target.url,
                                exc)
                    self._stop.wait(1.0)
            if moved or self._stop.is_set():
                continue
            # nothing to move: wait for a wake-up of any relayed queue, or the poll interval
            self._wait(queues, marks, self.source.settings.poll_interval)

    def _wait(self, queues: list[str], marks: dict[str, int], timeout: float) -> None:
        """Until a wake-up of one of ``queues`` (past ``marks``), a stop, or ``timeout``."""
        if not queues:
            self._stop.wait(timeout)
            return
        if len(queues) == 1:
            self.source.wakeups.wait(queues[0], marks[queues[0]], timeout)
            return
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if any(self.source.wakeups.mark(q) != marks[q] for q in queues):
                return
            self.source.wakeups.wait(queues[0], marks[queues[0]], min(0.05, timeout))

    def _queues(self) -> list[str]:
        if self.queues is not None:
            return self.queues
        from ivy._postgres.connection import PostgresError

        try:
            return sorted(self.source.queues())
        except PostgresError as exc:
            log.warning("relay: listing the queues failed: %s", exc)
            return []

    def move(self, queue: str) -> int:
        """One round for ``queue``: move up to ``batch`` committed messages; how many."""
        with self.source.db.connection() as conn, conn.transaction():
            rows: list[tuple[Any, ...]] = conn.execute(
                self._take, {"queue": queue, "limit": self.batch}).fetchall()
            if not rows:
                return 0
            self._hand_over(queue, rows)
            conn.execute(self._delete, {"ids": [r[0] for r in rows]})
        self.moved += len(rows)
        log.debug("relay: moved %d message(s) of %r to %s", len(rows), queue, self.target.url)
        return len(rows)

    def _hand_over(self, queue: str, rows: list[tuple[Any, ...]]) -> None:
        """Send ``rows`` in order, runs of one priority and no delay together; wait for every
        confirm; raise the first refusal."""
        futures: list[Future[None]] = []
        for (priority, delay), run in itertools.groupby(
                rows, key=lambda r: (int(r[2]), float(r[3]))):
            bodies = [bytes(r[1]) for r in run]
            futures.extend(self.target.send_many(queue, bodies, priority=priority,
                                                 delay=delay))
        deadline = time.monotonic() + self.confirm_timeout
        for future in futures:
            future.result(max(deadline - time.monotonic(), 0.0))
