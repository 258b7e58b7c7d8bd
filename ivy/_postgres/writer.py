"""The PostgreSQL notifier's background writer of final notifications: batches in one transaction,
each result's ``then`` (the worker's ack) after the commit (docs/internals/postgres.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ivy._batch_thread import BatchThread
from ivy._postgres.connection import Database, PostgresError, PostgresUnavailable

log = logging.getLogger("ivy.postgres")

#: most results written in one transaction
MAX_BATCH = 500
#: most results waiting: a worker handing more waits (bounded memory)
MAX_BACKLOG = 5000
#: longest pause between two tries of a failing batch
RETRY_MAX = 5.0

#: a result's parameters, and what follows its commit
Pending = tuple[dict[str, Any], Callable[[], None]]
Batch = list[Pending]


class Writer(BatchThread[Pending]):
    """Writes ``statement`` with the parameters handed to :meth:`submit`, in batches."""

    def __init__(self, db: Database, statement: bytes, *, name: str) -> None:
        super().__init__(name=name, max_batch=MAX_BATCH, max_backlog=MAX_BACKLOG)
        self._db = db
        self._statement = statement

    def submit(self, params: dict[str, Any], then: Callable[[], None]) -> None:
        """Write ``params`` soon; ``then()`` once committed (from the writer's thread)."""
        self._enqueue([(params, then)])

    def _refusal(self) -> Exception:
        return PostgresError(f"{self._name}: the notifier is closed")

    def _write_batch(self, batch: Batch) -> None:
        # what follows a stored result (its message's ack) runs before the batch counts as
        # written: flush() and close() wait for it, so the queue backend, closed after the
        # notifier, is still open for those acks
        for _, then in self._write(batch):
            try:
                then()
            except Exception:
                log.exception("%s: what followed a stored result raised", self._name)

    def _write(self, batch: Batch) -> Batch:
        """Write ``batch`` in one transaction; what was written. While the server cannot be
        reached, try again (until the writer closes). A batch the server refuses is written
        one by one, and a result it refuses alone is logged and left out: its message comes
        back when its lease ends."""
        pause = 0.1
        while True:
            try:
                self._transaction(batch)
                return batch
            except PostgresUnavailable as exc:
                if self.closed:
                    log.error("%s: %d result(s) not stored at close (%s); their messages "
                              "come back when their leases end", self._name, len(batch), exc)
                    return []
                log.warning("%s: storing %d result(s) failed (%s); trying again in %.1f s",
                            self._name, len(batch), exc, pause)
                self._wait_closed(pause)
                pause = min(pause * 2, RETRY_MAX)
            except PostgresError as exc:
                if len(batch) > 1:
                    return [item for one in batch for item in self._write([one])]
                log.error("%s: the server refused a result (%s); its message comes back when "
                          "its lease ends", self._name, exc)
                return []

    def _transaction(self, batch: Batch) -> None:
        with self._db.connection() as conn, conn.transaction(), conn.pipeline():
            for params, _ in batch:
                conn.execute(self._statement, params)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; whether it was in time."""
        return super().flush(timeout)

    def _closed_late(self, timeout: float) -> None:
        log.warning("%s: results still unwritten after %g s at close", self._name, timeout)
