"""The PostgreSQL notifier's background writer of final notifications: batches in one transaction,
each result's ``then`` (the worker's ack) after the commit (docs/internals/postgres.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ivy._postgres.connection import Database, PostgresError, PostgresUnavailable

log = logging.getLogger("ivy.postgres")

#: most results written in one transaction
MAX_BATCH = 500
#: most results waiting: a worker handing more waits (bounded memory)
MAX_BACKLOG = 5000
#: longest pause between two tries of a failing batch
RETRY_MAX = 5.0

Batch = list[tuple[dict[str, Any], Callable[[], None]]]


class Writer:
    """Writes ``statement`` with the parameters handed to :meth:`submit`, in batches."""

    def __init__(self, db: Database, statement: bytes, *, name: str) -> None:
        self._db = db
        self._statement = statement
        self._name = name
        self._waiting: list[tuple[dict[str, Any], Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._writing = False
        self._closed = False

    def submit(self, params: dict[str, Any], then: Callable[[], None]) -> None:
        """Write ``params`` soon; ``then()`` once committed (from the writer's thread)."""
        with self._cond:
            if self._closed:
                raise PostgresError(f"{self._name}: the notifier is closed")
            self._cond.wait_for(lambda: len(self._waiting) < MAX_BACKLOG or self._closed)
            self._waiting.append((params, then))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=self._name)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._waiting) or self._closed, 5.0)
                if not self._waiting:
                    self._thread = None
                    return
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                self._writing = True
                self._cond.notify_all()  # a worker waiting for room
            try:
                # what follows a stored result (its message's ack) runs before the batch
                # counts as written: flush() and close() wait for it, so the queue backend,
                # closed after the notifier, is still open for those acks
                for _, then in self._write(batch):
                    try:
                        then()
                    except Exception:
                        log.exception("%s: what followed a stored result raised", self._name)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

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
                with self._cond:
                    if self._closed:
                        log.error("%s: %d result(s) not stored at close (%s); their messages "
                                  "come back when their leases end", self._name, len(batch),
                                  exc)
                        return []
                log.warning("%s: storing %d result(s) failed (%s); trying again in %.1f s",
                            self._name, len(batch), exc, pause)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, pause)
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
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._writing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what waits (within ``timeout``), then stop."""
        if not self.flush(timeout):
            log.warning("%s: results still unwritten after %g s at close", self._name, timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
