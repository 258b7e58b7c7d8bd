"""The SQLite database file that the queue backend and notifier share: WAL, one connection per
thread, writers taking turns, checkpoints on a thread of their own (docs/internals/sqlite.md)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ivy._sqlite.writer import Writer

try:
    _fcntl: ModuleType | None = importlib.import_module("fcntl")
except ImportError:  # pragma: no cover - Windows
    _fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS ivy_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    token TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ivy_messages_fetch ON ivy_messages (queue, priority DESC, id);
CREATE TABLE IF NOT EXISTS ivy_dead_letters (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ivy_dead_letters_queue ON ivy_dead_letters (queue, id);
CREATE TABLE IF NOT EXISTS ivy_notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    call_id TEXT NOT NULL,
    body BLOB NOT NULL,
    final INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ivy_notifications_channel ON ivy_notifications (channel, seq);
CREATE UNIQUE INDEX IF NOT EXISTS ivy_notifications_final
    ON ivy_notifications (call_id) WHERE final = 1;
CREATE INDEX IF NOT EXISTS ivy_notifications_created ON ivy_notifications (created);
CREATE TABLE IF NOT EXISTS ivy_workers (
    name TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ivy_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
"""

#: Longest a waiter sleeps without a wake-up before it looks again.
POLL_INTERVAL = 1.0
#: How often a database's checkpoint thread looks whether the write-ahead log grew.
CHECKPOINT_EVERY = 0.1
#: How long a writer that ended its turn while others waited lets pass before its next one.
TURN_YIELD = 0.0003
#: Longest a closing database waits for its writer thread to commit what is waiting.
WRITER_CLOSE_TIMEOUT = 10.0

#: path -> the database that backends of this process opened on it (Database.shared)
_shared: dict[str, Database] = {}
_shared_lock = threading.Lock()


def _autoincrement_notifications(conn: sqlite3.Connection) -> None:
    """Files made by earlier ivy versions number notifications with a plain INTEGER key, which
    SQLite reuses once every row is pruned: a subscription whose cursor is past the new numbers
    would miss them. Copy such a table into the AUTOINCREMENT one (in the caller's transaction)."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                       "name = 'ivy_notifications'").fetchone()
    if row is None or "AUTOINCREMENT" in row[0].upper():
        return
    conn.execute("ALTER TABLE ivy_notifications RENAME TO ivy_notifications_before")
    for index in ("channel", "final", "created"):
        conn.execute(f"DROP INDEX IF EXISTS ivy_notifications_{index}")
    conn.execute(SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS ivy_notifications"):
                        SCHEMA.index(");", SCHEMA.index("ivy_notifications (")) + 1])
    conn.execute("INSERT INTO ivy_notifications SELECT * FROM ivy_notifications_before")
    conn.execute("DROP TABLE ivy_notifications_before")


def _roll_back(conn: sqlite3.Connection) -> None:
    """Roll back the transaction of ``conn`` after a failure, if one is still open: SQLite
    rolls back by itself on some errors (a full disk, out of memory), and a ``ROLLBACK``
    then fails with "no transaction is active", which must not replace the error that
    caused it (the writer thread tells what to retry by that error)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class Database:
    """One SQLite file; a connection per thread, created on first use, and a writer thread
    for writes committed in groups (:mod:`ivy._sqlite.writer`), started on first use.

    Backends take theirs from :meth:`shared`, so that the queue backend and the notifier of
    a process on one file share it: one set of connections, one checkpoint thread, and one
    writer, which commits a worker's ack no earlier than the result recorded before it."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = os.path.abspath(os.fspath(path))
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._users = 1  # close() really closes when the last user of a shared one closes
        self._writer: Writer | None = None
        self._turn_path = os.path.join(
            tempfile.gettempdir(),
            f"ivy-turn-{hashlib.sha256(self.path.encode()).hexdigest()[:16]}")
        self._turn_fds: list[int] = []
        # a database collected unclosed; not at interpreter exit, where finalizers run before
        # ivy's exit hook: its last sends still take turns on these descriptors
        weakref.finalize(self, _close_fds, self._turn_fds).atexit = False
        #: whether ivy's writers take turns on this file (docs/internals/sqlite.md): where
        #: they cannot, commits checkpoint as SQLite does by default
        self.turns = _fcntl is not None and self._turn_fd() is not None
        self._init_schema(busy_timeout)
        self._stop_checkpoints = threading.Event()
        # the thread holds the database weakly: one never closed is still collected (and its
        # thread then ends), as it was before the thread existed
        self._checkpoints = threading.Thread(
            target=_checkpoint_loop, args=(weakref.ref(self), self._stop_checkpoints),
            daemon=True, name="ivy-sqlite-checkpoint")
        if self.turns:
            self._checkpoints.start()

    def _init_schema(self, timeout: float) -> None:
        """Switch to WAL and create the tables. Switching the journal mode can report 'locked'
        without waiting while another process creates the same file, so retry for a while."""
        conn = self.conn()
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                with self.write(conn):
                    _autoincrement_notifications(conn)
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    @classmethod
    def shared(cls, path: str | os.PathLike[str]) -> Database:
        """This process's open database on ``path``, or a new one; each call needs its own
        :meth:`close` (the last one closes it)."""
        key = os.path.abspath(os.fspath(path))
        with _shared_lock:
            db = _shared.get(key)
            if db is not None and not db._closed:
                db._users += 1
                return db
            db = _shared[key] = cls(key)
            return db

    @property
    def writer(self) -> Writer:
        """The writer thread of this database (see :mod:`ivy._sqlite.writer`)."""
        writer = self._writer
        if writer is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"SQLite database {self.path} is closed")
                writer = self._writer
                if writer is None:
                    writer = self._writer = Writer(self)
        return writer

    def flush_writes(self, timeout: float | None = None) -> bool:
        """Wait until the writes handed to the writer so far are committed (what a read must
        see); False after ``timeout`` seconds."""
        writer = self._writer
        return writer is None or writer.flush(timeout)

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError(f"SQLite database {self.path} is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            # WAL + NORMAL survives a killed process; an OS crash may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            if self.turns:  # the checkpoint thread does it (it needs turns)
                conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE) in this writer's turn, committed on success."""
        conn = conn or self.conn()
        with self.turn():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _roll_back(conn)
                raise

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write statement on its own (autocommit) in this writer's turn; its row count."""
        fd = self._take_turn()
        try:
            return self.conn().execute(sql, params).rowcount
        finally:
            self._end_turn(fd)

    def returning(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """One write statement with ``RETURNING`` in this writer's turn; its rows (read in
        the turn: the statement commits once its rows are read)."""
        fd = self._take_turn()
        try:
            return self.conn().execute(sql, params).fetchall()
        finally:
            self._end_turn(fd)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """This thread's turn among ivy's writers of the file (docs/internals/sqlite.md); a
        turn inside a turn is the same turn."""
        fd = self._take_turn()
        try:
            yield
        finally:
            self._end_turn(fd)

    def _take_turn(self) -> int | None:
        """Wait for this thread's turn; what :meth:`_end_turn` needs to end it."""
        local = self._local
        depth = getattr(local, "turns", 0)
        local.turns = depth + 1
        if depth or not self.turns:
            return None  # a turn inside a turn, or no turns here
        fd = self._turn_fd()
        if fd is not None and _fcntl is not None:
            try:
                if not self._wait_turn(fd, _fcntl):
                    return None  # proceed without it: SQLite's busy timeout decides
            except BaseException:
                local.turns = 0
                raise
        return fd

    def _wait_turn(self, fd: int, fcntl: ModuleType) -> bool:
        """Take the turn lock; False if it was held for the whole busy timeout (a writer
        paused with it, say): the caller then asks SQLite directly, which errs after the
        same timeout if the file is still locked, as it would without turns, instead of
        waiting forever. Sleeps between tries grow from 20 us to 0.2 ms: a turn lasts ~0.1 ms.

        Fairness: a writer that waits holds a shared lock on the ``-want`` file meanwhile; one
        that ends its turn while someone waits lets :data:`TURN_YIELD` seconds pass before it
        takes its next, which the waiters' tries fall into. Without that, a producer's sender
        thread, taking its turn again microseconds after each batch, kept a worker on the same
        file from fetching for most of a burst (1,000 of 20,000 calls run while they were sent).
        """
        local = self._local
        pause = local.__dict__.pop("yield_until", 0.0) - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        flock, flags = fcntl.flock, fcntl.LOCK_EX | fcntl.LOCK_NB
        delay, deadline = 0.0, 0.0
        want: int | None = None
        try:
            while True:
                try:
                    flock(fd, flags)
                    return True
                except BlockingIOError:
                    pass
                if want is None:
                    want = self._say_waiting(fcntl)
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._busy_ms / 1000
                elif now >= deadline:
                    return False
                time.sleep(delay)
                delay = min(max(delay * 2, 0.00002), 0.0002)
        finally:
            if want is not None:
                fcntl.flock(want, fcntl.LOCK_UN)

    def _say_waiting(self, fcntl: ModuleType) -> int | None:
        """Hold a shared lock on the ``-want`` file while this thread waits for its turn; its
        descriptor, or None if that could not be done this time (an ending turn looks)."""
        want: int | None = getattr(self._local, "want_fd", None)
        if want is None:
            return None
        try:
            fcntl.flock(want, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return want

    def _end_turn(self, fd: int | None) -> None:
        local = self._local
        local.turns -= 1
        fcntl = _fcntl
        if fd is not None and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            want = local.want_fd
            try:  # does anyone wait? (see _wait_turn)
                fcntl.flock(want, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                local.yield_until = time.monotonic() + TURN_YIELD
            else:
                fcntl.flock(want, fcntl.LOCK_UN)

    def _turn_fd(self) -> int | None:
        """This thread's own descriptor of the turn file (``flock`` excludes descriptors, so
        threads need one each), or None where it cannot be used; its descriptor of the
        ``-want`` file beside it goes to ``_local.want_fd``. Only plain files of this user's
        own are used: one that another user made (or a link in its place) could be held
        locked forever by them."""
        fd: int | None = getattr(self._local, "turn_fd", None)
        if fd is None and not getattr(self._local, "turn_failed", False):
            try:
                fd = _open_own(self._turn_path)
                want = _open_own(self._turn_path + "-want")
            except OSError:
                if fd is not None:
                    os.close(fd)
                self._local.turn_failed = True  # SQLite's own waits, then
                return None
            with self._lock:
                if self._closed:
                    _close_fds([fd, want])
                    return None
                self._turn_fds.extend((fd, want))
            self._local.turn_fd, self._local.want_fd = fd, want
        return fd

    def _checkpoint(self, seen: tuple[int, int] | None) -> tuple[int, int] | None:
        """One look of the checkpoint thread: whenever the write-ahead log changed since
        ``seen``, a passive checkpoint that copies what it can while writers go on, then, in a
        writers' turn, a second one that copies the few pages written meanwhile, so that it
        completes and the next writer starts the log over (without that turn, steady writes
        would make the log grow without end). Returns what to pass next time."""
        wal = self.path + "-wal"
        try:
            stat = os.stat(wal)
        except OSError:
            return seen  # no log (yet): nothing to copy
        if (stat.st_size, stat.st_mtime_ns) == seen:
            return seen
        try:
            conn = self.conn()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            with self.turn():
                busy, logged, copied = conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            stat = os.stat(wal)
        except (sqlite3.Error, OSError, RuntimeError):  # closing, or locked for a moment
            return None
        # looked at again next time unless every frame was copied
        return (stat.st_size, stat.st_mtime_ns) if not busy and logged == copied else None

    def close(self) -> None:
        """Close this use of the database; the last user's close commits what the writer
        holds (for up to :data:`WRITER_CLOSE_TIMEOUT` s) and closes the connections."""
        with _shared_lock:
            self._users -= 1
            if self._users > 0 or self._closed:
                return
            if _shared.get(self.path) is self:
                del _shared[self.path]
        if self._writer is not None:
            self._writer.close(WRITER_CLOSE_TIMEOUT)
        self._stop_checkpoints.set()
        if self._checkpoints.is_alive() and self._checkpoints is not threading.current_thread():
            self._checkpoints.join()  # never close its connection under a checkpoint
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
            fds = list(self._turn_fds)
            self._turn_fds.clear()  # the same list the finalizer holds: closed once
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        _close_fds(fds)

    def wake_dir(self, kind: str) -> str:
        """The wake-up directory of this file's ``kind`` of writes, of this user: another
        user's processes wake their own (:mod:`ivy._sqlite.wake` checks it is ours)."""
        digest = hashlib.sha256(self.path.encode()).hexdigest()[:16]
        uid = os.getuid() if hasattr(os, "getuid") else 0
        return os.path.join(tempfile.gettempdir(), f"ivy-wake-{uid}-{digest}-{kind}")


def _forget_shared() -> None:
    """In a forked child: its parent's connections and threads are not its own."""
    _shared.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared)


def _create_private(path: str) -> None:
    """Create the database file readable and writable by its owner only (0600: it holds the
    calls' arguments, results and dead letters) unless it exists; SQLite gives its ``-wal``
    and ``-shm`` files the mode of the database file. A file that exists keeps its mode."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _open_own(path: str) -> int:
    """Open (or make) ``path`` for locking; OSError unless it is a plain file of this user."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if os.fstat(fd).st_uid != os.getuid():
        os.close(fd)
        raise PermissionError(f"{path} belongs to another user")
    return fd


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _checkpoint_loop(ref: weakref.ReferenceType[Database], stop: threading.Event) -> None:
    """A database's checkpoint thread (docs/internals/sqlite.md): until it is closed, or
    collected without having been closed."""
    seen: tuple[int, int] | None = None
    while not stop.wait(CHECKPOINT_EVERY):
        db = ref()
        if db is None:
            return
        seen = db._checkpoint(seen)
        del db  # no strong reference while waiting
