"""Group commit for the SQLite backends: one writer thread per database file and process commits,
in order, whatever was handed to it meanwhile (docs/internals/sqlite.md)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ivy._flags import Flag


class Target(Protocol):
    """What the writer needs of its database (:class:`ivy._sqlite.database.Database`)."""

    path: str

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""

    def write(self, conn: sqlite3.Connection | None = None
              ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write statement in its own transaction; the rows it changed."""

log = logging.getLogger("ivy.sqlite")

#: Most writes committed in one transaction (which holds the file's write lock meanwhile).
MAX_BATCH = 2000
#: Longest pause between tries of a commit that failed for want of the lock, disk or memory.
MAX_PAUSE = 1.0
#: Most rows in one merged statement (see :class:`Rows`; under SQLite's old limit of 999
#: parameters for rows of up to 15 values).
MAX_ROWS = 64


#: SQLite's primary result codes of failures that pass: busy or locked, out of memory, I/O
#: error, disk full, cannot open, lock protocol
TRANSIENT_CODES = frozenset({5, 6, 7, 10, 13, 14, 15})


def transient(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is worth trying again (the file locked, the disk full, ...) rather
    than a fault of the statement itself (a missing table, a constraint)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return isinstance(exc, sqlite3.OperationalError)
    return code & 0xFF in TRANSIENT_CODES


@dataclass(frozen=True)
class Rows:
    """A write statement that takes any number of rows: ``template`` has ``{rows}`` where
    they go, each written as ``row`` (its placeholders, such as ``"(?, ?)"``). Writes of one
    :class:`Rows` committed together become one statement (docs/internals/sqlite.md)."""

    template: str
    row: str

    @functools.lru_cache(maxsize=256)  # noqa: B019 - few instances, each for good
    def many(self, n: int) -> str:
        """The statement for ``n`` rows."""
        return self.template.format(rows=", ".join([self.row] * n))

    def statements(self, rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[Any]]]:
        """The statements that write ``rows`` (each its values), in order: up to
        :data:`MAX_ROWS` rows each, in the sizes of :func:`chunk_sizes`."""
        out: list[tuple[str, list[Any]]] = []
        start = 0
        for size in chunk_sizes(len(rows), MAX_ROWS):
            out.append((self.many(size),
                        [value for row in rows[start:start + size] for value in row]))
            start += size
        return out


Statement = str | Rows


def _one(statement: Statement) -> str:
    return statement.many(1) if isinstance(statement, Rows) else statement


class Wakes(Protocol):
    """What a write pokes once it is committed (:class:`ivy._sqlite.wake.WakeSender`)."""

    def wake(self) -> None: ...


class _Write:
    __slots__ = ("done", "error", "params", "sql", "then", "wake")

    def __init__(self, sql: Statement, params: tuple[Any, ...], wake: Wakes | None,
                 then: Callable[[], None] | None, done: Flag | None) -> None:
        self.sql = sql
        self.params = params
        self.wake = wake
        self.then = then
        self.done = done  # set once written or dropped (for a caller that waits)
        self.error: BaseException | None = None


class Writer:
    """The writer thread of one database (docs/internals/sqlite.md), started on first use."""

    def __init__(self, db: Target) -> None:
        self._db = db
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Write] = []
        self._submitted = 0  # writes handed in so far
        self._finished = 0  # ... and written or dropped, in the same order
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._deadline = 0.0  # while closing: when to give up on what is left

    def submit(self, sql: Statement, params: tuple[Any, ...] = (), *,
               wake: Wakes | None = None,
               then: Callable[[], None] | None = None) -> None:
        """Commit one write statement soon, after every write submitted before it; then poke
        ``wake`` (once per commit, however many writes name it) and call ``then``, from the
        writer thread."""
        self._put(_Write(sql, params, wake, then, None))

    def write(self, sql: Statement, params: tuple[Any, ...] = (), *,
              wake: Wakes | None = None, timeout: float | None = None) -> None:
        """:meth:`submit`, and wait until the write is committed: raise the error that made
        the writer drop it, or :class:`TimeoutError` after ``timeout`` seconds (it may still be
        written later)."""
        if threading.current_thread() is self._thread:  # from a then callback: it would
            self._db.execute(_one(sql), params)           # wait for itself
            if wake is not None:
                wake.wake()
            return
        item = _Write(sql, params, wake, None, Flag())
        self._put(item)
        assert item.done is not None
        if not item.done.wait(timeout):
            raise TimeoutError(f"SQLite write to {self._db.path} not committed within "
                               f"{timeout} s (the writer thread is behind or the file locked)")
        if item.error is not None:
            raise item.error

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write submitted so far is committed (or dropped), and those that
        their ``then`` callbacks submit (a worker's acks after its results); False if that
        took longer than ``timeout`` seconds. Returns at once when nothing is waiting, and
        False at once on the writer's own thread (a then callback), which cannot wait for
        itself."""
        if threading.current_thread() is self._thread:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            for _ in range(2):  # the writes, then what followed them
                target = self._submitted
                while self._finished < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            return True

    def close(self, timeout: float) -> None:
        """Commit what is waiting (and what the ``then`` callbacks submit meanwhile) for up to
        ``timeout`` seconds, then stop the thread; later submits raise ``RuntimeError``."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout + 1.0)
        with self._cond:
            self._closed = True
            left, self._queue = self._queue, []
            for item in left:
                if item.error is None:
                    item.error = RuntimeError(f"SQLite database {self._db.path} was closed "
                                              "before this write was committed")
                if item.done is not None:
                    item.done.set()
            self._finish(left)
        if left:
            log.error("SQLite %s closed with %d writes not committed (a worker's acks and "
                      "results: those messages are delivered again when their leases end)",
                      self._db.path, len(left))

    # -- the thread ----------------------------------------------------------------------------

    def _put(self, item: _Write) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"SQLite database {self._db.path} is closed")
            self._queue.append(item)
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="ivy-sqlite-writer")
                self._thread.start()
            elif len(self._queue) == 1:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and nothing left
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
            written, left = self._commit(batch)
            done = batch[:len(batch) - len(left)]
            for item in done:  # a caller of write() goes on at once
                if item.done is not None:
                    item.done.set()
            self._after(written)
            with self._cond:  # counted once their then callbacks ran (see flush)
                if left:  # closing, and the file stayed unwritable: close() counts them
                    self._queue[:0] = left
                self._finish(done)
            if left:
                return

    def _finish(self, batch: list[_Write]) -> None:
        """Count ``batch`` as finished, for :meth:`flush` (``_cond`` held; the callers of
        :meth:`write` were released already)."""
        self._finished += len(batch)
        self._cond.notify_all()

    def _commit(self, batch: list[_Write]) -> tuple[list[_Write], list[_Write]]:
        """Write ``batch`` in one transaction, or, when one of its writes fails by itself,
        one write at a time, dropping those that fail. Retries what fails for want of the
        lock, disk or memory, until closing and past its deadline. Returns the writes written
        and those left unwritten (the batch's tail, only when giving up)."""
        db = self._db
        pending: list[_Write] = list(batch)
        written: list[_Write] = []
        alone = False  # one write per transaction, to find the one that fails
        pause = 0.01
        while pending:
            chunk = pending[:1] if alone else pending
            try:
                conn = db.conn()
                with db.write(conn):
                    for sql, params in _statements(chunk):
                        conn.execute(sql, params)
            except (sqlite3.Error, RuntimeError) as exc:  # RuntimeError: closed under us
                if isinstance(exc, sqlite3.Error) and not transient(exc):
                    if not alone:
                        alone = True
                        continue
                    item = pending.pop(0)
                    item.error = exc
                    log.error("SQLite %s: a write failed and was dropped (%s): %s", db.path,
                              exc, _one(item.sql).split("(")[0].strip())
                    continue
                if isinstance(exc, RuntimeError) or (
                        self._closing and time.monotonic() >= self._deadline):
                    for item in pending:
                        item.error = exc
                    return written, pending
                log.warning("SQLite %s: committing %d writes failed (%s); trying again in "
                            "%.2f s", db.path, len(chunk), exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)
                continue
            written.extend(chunk)
            del pending[:len(chunk)]
            pause = 0.01
        return written, []

    def _after(self, written: list[_Write]) -> None:
        """Wake-ups (each once), then the ``then`` callbacks in order; none stops the thread."""
        wakes: dict[int, Wakes] = {}
        for item in written:
            if item.wake is not None:
                wakes.setdefault(id(item.wake), item.wake)
        for waker in wakes.values():
            try:
                waker.wake()
            except Exception:
                log.exception("SQLite %s: a wake-up after a commit failed", self._db.path)
        for item in written:
            if item.then is not None:
                try:
                    item.then()
                except Exception:
                    log.exception("SQLite %s: what was to follow a write failed",
                                  self._db.path)


def _statements(chunk: list[_Write]) -> list[tuple[str, Any]]:
    """The statements that commit ``chunk``: each write alone, but those of one :class:`Rows`
    merged, at the place of the first of them, up to :data:`MAX_ROWS` per statement."""
    plan: list[tuple[Statement, list[Any]]] = []
    kinds: dict[Rows, list[Any]] = {}
    for item in chunk:
        if isinstance(item.sql, Rows):
            rows = kinds.get(item.sql)
            if rows is None:
                rows = kinds[item.sql] = []
                plan.append((item.sql, rows))
            rows.append(item.params)
        else:
            plan.append((item.sql, [item.params]))
    statements: list[tuple[str, Any]] = []
    for sql, params in plan:
        if isinstance(sql, Rows):
            statements.extend(sql.statements(params))
        else:
            statements.append((sql, params[0]))
    return statements


def chunk_sizes(n: int, most: int) -> list[int]:
    """``n`` split into powers of two of at most ``most`` (a power of two), largest first:
    a few statement texts, each prepared once per connection and then reused from the
    ``sqlite3`` module's statement cache (128 per connection), instead of one per size."""
    sizes = [most] * (n // most)
    n %= most
    size = most
    while n:
        size //= 2
        if n >= size:
            sizes.append(size)
            n -= size
    return sizes
