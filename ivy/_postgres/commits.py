"""Following the transactions of the application's own connections, so that a call enqueued in
one is sent when it commits and never when it rolls back (docs/internals/postgres.md)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from ivy._postgres import queries
from ivy._postgres.connection import Database, PostgresError
from ivy.errors import ConfigurationError, PublishError, TransactionRolledBack

log = logging.getLogger("ivy.postgres")

#: Seconds between the first looks at an open transaction...
FIRST_POLL = 0.01
#: ... growing by half each time, up to this.
MAX_POLL = 0.5
#: the status of each followed transaction id (as text)
STATUS = (b"SELECT x, pg_xact_status(x::xid8) FROM unnest(%(xids)s::text[]) AS x")


class CommitWatcher:
    """Completes a future per followed transaction: with None once it committed, with
    :class:`ivy.errors.TransactionRolledBack` once it aborted."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[str, list[Future[None]]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def follow(self, xid: str | None) -> Future[None]:
        """A future for the transaction ``xid`` (None: it committed already)."""
        future: Future[None] = Future()
        if xid is None:
            future.set_result(None)
            return future
        with self._lock:
            self._pending.setdefault(xid, []).append(future)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="ivy-postgres-commits")
                self._thread.start()
        self._wake.set()  # a new transaction is looked at soon
        return future

    def _run(self) -> None:
        wait = FIRST_POLL
        while True:
            with self._lock:
                xids = list(self._pending)
                if not xids or self._closed:
                    self._thread = None
                    return
            try:
                with self._db.connection() as conn:
                    rows = conn.execute(STATUS, {"xids": xids}).fetchall()
            except PostgresError as exc:
                log.warning("following %d transaction(s) of the application: %s; trying "
                            "again", len(xids), exc)
                rows = []
            ended = False
            for xid, status in rows:
                if status == "in progress":
                    continue
                with self._lock:
                    futures = self._pending.pop(str(xid), [])
                ended = True
                for future in futures:
                    if status == "committed":
                        future.set_result(None)
                    else:  # aborted, or too old for the server to know
                        what = "rolled back" if status == "aborted" else "is unknown to the server"
                        future.set_exception(TransactionRolledBack(
                            f"the transaction that enqueued this call {what} (transaction "
                            f"{xid}): the message was never visible to workers"))
            wait = FIRST_POLL if ended else min(wait * 1.5, MAX_POLL)
            self._wake.wait(wait)
            if self._wake.is_set():
                self._wake.clear()
                wait = FIRST_POLL

    def close(self) -> None:
        """Stop following; the futures still open stay open (their calls wait until
        ``pending_ttl``)."""
        with self._lock:
            self._closed = True
        self._wake.set()


def _check_database(db: Database, info: psycopg.ConnectionInfo) -> None:
    """Refuse a connection to another database than the queue's (its rows would never be
    seen by the workers)."""
    with db.connection() as own:
        ours = own.info.dbname
    if info.dbname != ours:
        raise ConfigurationError(
            f"connection= is to database {info.dbname!r}, but the queue {db.settings.url} "
            f"is in database {ours!r}: pass a connection to the queue's database")


def _failed(db: Database, exc: psycopg.Error, rows: Sequence[queries.Row]) -> PublishError:
    return PublishError(f"{len(rows)} message(s) could not be written in the caller's "
                        f"transaction: {db.describe(exc)}")


def write_within(db: Database, statements: queries.Statements, conn: psycopg.Connection[Any],
                 rows: Sequence[queries.Row]) -> str | None:
    """Insert ``rows`` with the caller's connection, in its transaction: the id of that
    transaction, or None when the rows are committed already (autocommit)."""
    if not isinstance(conn, psycopg.Connection):
        raise ConfigurationError(
            f"connection={conn!r} is not a psycopg 3 connection: pass a psycopg.Connection "
            "(for a psycopg.AsyncConnection, use 'async with app.transaction(conn):')")
    _check_database(db, conn.info)
    try:
        queries.insert(conn, statements, rows)
        if conn.info.transaction_status == TransactionStatus.IDLE:
            return None  # autocommit: written and committed
        row = conn.execute(queries.XID).fetchone()
    except psycopg.Error as exc:
        raise _failed(db, exc, rows) from exc
    return str(row[0]) if row else None


async def write_within_async(db: Database, statements: queries.Statements,
                             conn: psycopg.AsyncConnection[Any],
                             rows: Sequence[queries.Row]) -> str | None:
    """:func:`write_within` on an asynchronous connection."""
    await asyncio.to_thread(_check_database, db, conn.info)
    try:
        await conn.execute(statements.insert, queries.params(statements, rows))
        if conn.info.transaction_status == TransactionStatus.IDLE:
            return None
        row = await (await conn.execute(queries.XID)).fetchone()
    except psycopg.Error as exc:
        raise _failed(db, exc, rows) from exc
    return str(row[0]) if row else None
