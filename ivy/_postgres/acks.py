"""The acks of the PostgreSQL queue, written in batches on a thread of their own: one statement
and one commit for the acks handed over meanwhile, instead of a round trip and a commit each."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ivy._batch_thread import BatchThread
from ivy._postgres.connection import Database, PostgresError, PostgresUnavailable

log = logging.getLogger("ivy.postgres")

#: most acks written in one statement
MAX_BATCH = 1000
#: how long a write that fails for want of the server is tried again before its acks are
#: given up (their messages then come back when their leases end, and may run again)
RETRY_FOR = 30.0
#: a thread with nothing to write ends after this many seconds (the next ack starts one)
IDLE = 5.0


@dataclass(slots=True)
class Ack:
    """One delivery to acknowledge: its queue, its row and the token of its lease."""

    queue: str
    row_id: int
    token: str


class Acker(BatchThread[Ack]):
    """Writes the acks handed to :meth:`submit`: what comes while a write is in progress goes
    in the next one, one ``DELETE`` for all. While the thread is idle an ack is written at
    once, alone: batching adds no wait."""

    def __init__(self, db: Database, statement: bytes) -> None:
        super().__init__(name="ivy-postgres-ack", max_batch=MAX_BATCH, idle=IDLE)
        self._db = db
        self._statement = statement

    def submit(self, ack: Ack) -> None:
        """Write ``ack`` soon."""
        self._enqueue([ack])

    def _refusal(self) -> Exception:
        return PostgresError(f"the PostgreSQL queue {self._db.settings.url} is closed: ack "
                             "not written")

    def _write_batch(self, batch: list[Ack]) -> None:
        try:
            self._write(batch)
        except Exception:  # never let the thread die with acks waiting
            log.exception("writing %d ack(s) to %s failed; their messages come back when "
                          "their leases end", len(batch), self._db.settings.url)

    def _write(self, batch: list[Ack]) -> None:
        """One statement for ``batch``; tried again while the server cannot be reached, up to
        :data:`RETRY_FOR` s (or until the queue closes)."""
        params: dict[str, list[Any]] = {"ids": [a.row_id for a in batch],
                                        "tokens": [a.token for a in batch]}
        url = self._db.settings.url
        try:
            deleted = self._try_for(lambda: self._delete(params), PostgresUnavailable,
                                    RETRY_FOR, f"{len(batch)} ack(s)", url, log)
        except PostgresError as exc:
            log.error("%d ack(s) refused by %s (%s); their messages come back when their "
                      "leases end", len(batch), url, exc)
            return
        if deleted is None:
            return
        for ack in batch:
            if ack.row_id not in deleted:
                log.warning("ack of a message of %s (row %s) skipped: its lease ran out and "
                            "another delivery of it is under way", ack.queue, ack.row_id)

    def _delete(self, params: dict[str, list[Any]]) -> set[int]:
        """The ids of the rows the statement deleted (those whose lease was still ours)."""
        with self._db.connection() as conn:
            return {row[0] for row in conn.execute(self._statement, params)}

    def _closed_late(self, timeout: float) -> None:
        log.warning("acks to %s still unwritten after %g s at close; their messages come "
                    "back when their leases end", self._db.settings.url, timeout)
