"""What the SQLite queue backend and notifier share: the database file (WAL, one connection per
thread) and cross-process wake-ups.

Wake-ups: each waiting consumer or subscription binds a Unix datagram socket in a folder named
after the database file; a writer sends one byte to every socket there after it commits. That
turns polling into an event (a new message is seen in well under a millisecond) while a poll at a
bounded interval remains the fallback, so a lost datagram only costs latency, never a message.
Where Unix sockets are missing (Windows), only the poll is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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


class Database:
    """One SQLite file; a connection per thread, created on first use."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = os.path.abspath(os.fspath(path))
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._init_schema(busy_timeout)

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
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), committed on success."""
        conn = conn or self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def wake_dir(self, kind: str) -> str:
        digest = hashlib.sha256(self.path.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"ivy-wake-{digest}-{kind}")


class WakeListener:
    """A socket that writers of the same database and kind poke after they commit."""

    def __init__(self, directory: str) -> None:
        self._sock: socket.socket | None = None
        self.path = ""
        if not hasattr(socket, "AF_UNIX"):
            return
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        sock.setblocking(False)
        self._sock = sock

    def wait(self, timeout: float) -> None:
        """Return on a wake-up or after ``timeout`` seconds, and drain pending wake-ups."""
        if timeout <= 0:
            return
        sock = self._sock
        if sock is None:
            threading.Event().wait(min(timeout, 0.1))
            return
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            with contextlib.suppress(OSError):
                while True:
                    sock.recv(64)

    def interrupt(self) -> None:
        """Wake a wait() in progress at once (from another thread)."""
        if self._sock is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(
                    OSError):
                s.setblocking(False)  # a full buffer means a wake-up is pending already
                s.sendto(b"!", self.path)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class WakeSender:
    """Pokes every listener of one database and kind; never blocks, never raises.

    The listeners are the socket files in the wake directory. Listing it on every wake cost
    ~15% of a SQLite worker's time per task, so the listing is kept while the directory's
    modification time stays the one it was listed at. Since file systems stamp that time
    coarsely (a tick of some ms), a listing taken less than :attr:`SETTLE` seconds after the
    stamp is not trusted: a listener bound in the same tick would share the stamp.
    """

    SETTLE = 0.05

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._listed: list[str] = []
        self._stamp = -1
        self._trusted = False
        self._sock: socket.socket | None = None
        if hasattr(socket, "AF_UNIX"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        self._lock = threading.Lock()

    def wake(self) -> None:
        if self._sock is None:
            return
        with self._lock:
            try:
                entries = self._listeners()
            except FileNotFoundError:
                return
            for path in entries:
                try:
                    self._sock.sendto(b"!", path)
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has wake-ups pending already
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # left behind by a process that died
                    self._trusted = False
                except OSError:
                    pass

    def _listeners(self) -> list[str]:
        stamp = os.stat(self._dir).st_mtime_ns
        if stamp == self._stamp and self._trusted:
            return self._listed
        listed = [os.path.join(self._dir, name) for name in os.listdir(self._dir)]
        self._listed, self._stamp = listed, stamp
        self._trusted = time.time() - stamp / 1e9 > self.SETTLE
        return listed

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
