"""The contract suites on the embedded backends (memory and SQLite)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract import NotifierContract, QueueBackendContract

from ivy.notifiers.base import Notifier
from ivy.notifiers.memory import MemoryNotifier
from ivy.notifiers.sqlite import SQLiteNotifier
from ivy.queues.base import QueueBackend
from ivy.queues.memory import MemoryQueueBackend
from ivy.queues.sqlite import SQLiteQueueBackend


class TestMemoryQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, memory_url: str) -> Iterator[QueueBackend]:
        b = MemoryQueueBackend(memory_url.removeprefix("memory://"))
        yield b
        b.close()


class TestSQLiteQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[QueueBackend]:
        b = SQLiteQueueBackend(str(tmp_path / "q.db"))
        yield b
        b.close()


class TestMemoryNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, memory_url: str) -> Iterator[Notifier]:
        n = MemoryNotifier(memory_url.removeprefix("memory://"))
        yield n
        n.close()


class TestSQLiteNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, tmp_path: Path) -> Iterator[Notifier]:
        n = SQLiteNotifier(str(tmp_path / "n.db"))
        yield n
        n.close()


def test_sqlite_queue_is_shared_by_two_backend_objects(tmp_path: Path) -> None:
    # Two processes are two backend objects on one file; here, two objects in one process.
    producer = SQLiteQueueBackend(str(tmp_path / "shared.db"))
    worker = SQLiteQueueBackend(str(tmp_path / "shared.db"))
    producer.publish("q", b"hello")
    consumer = worker.consume("q")
    d = consumer.get(5)
    assert d is not None and d.body == b"hello"
    d.ack()
    consumer.close()
    producer.close()
    worker.close()


def test_sqlite_notifications_after_a_full_prune_still_arrive(tmp_path: Path) -> None:
    # Given a subscription that has read notifications up to some sequence number
    notifier = SQLiteNotifier(str(tmp_path / "n.db"))
    sub = notifier.subscribe("ch", lambda: [])
    try:
        assert sub.get(0.01) == []
        for i in range(3):
            notifier.publish("ch", f"c{i}", b"old %d" % i, final=True)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            got += sub.get(0.5)
        assert got == [b"old 0", b"old 1", b"old 2"]
        # When every stored notification is pruned (a quiet day), and a new one is published
        notifier.db.conn().execute("DELETE FROM ivy_notifications")
        notifier.publish("ch", "c-new", b"new", final=True)
        # Then the subscription gets it: a sequence number is never given out twice
        deadline = time.monotonic() + 10
        while not got[3:] and time.monotonic() < deadline:
            got += sub.get(0.5)
        assert got[3:] == [b"new"]
    finally:
        sub.close()
        notifier.close()


def test_a_notifier_file_from_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    # Given a file whose notification table has a plain INTEGER key (earlier ivy versions)
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE ivy_notifications (seq INTEGER PRIMARY KEY, channel TEXT NOT NULL,
            call_id TEXT NOT NULL, body BLOB NOT NULL, final INTEGER NOT NULL,
            created REAL NOT NULL);
        CREATE UNIQUE INDEX ivy_notifications_final ON ivy_notifications (call_id)
            WHERE final = 1;
        INSERT INTO ivy_notifications VALUES (7, 'ch', 'c1', x'6f6c64', 1, 1e12);
    """)
    conn.close()
    # When ivy opens it
    notifier = SQLiteNotifier(str(path))
    try:
        # Then the table numbers with AUTOINCREMENT, and what it held is kept
        sql = notifier.db.conn().execute(
            "SELECT sql FROM sqlite_master WHERE name = 'ivy_notifications'").fetchone()[0]
        assert "AUTOINCREMENT" in sql
        assert notifier.stored("c1") == b"old"
        notifier.publish("ch", "c2", b"new", final=True)
        assert notifier.db.conn().execute(
            "SELECT max(seq) FROM ivy_notifications").fetchone()[0] == 8
    finally:
        notifier.close()


@pytest.mark.parametrize("settle", [0.0, 0.05])
def test_a_listener_that_joins_between_two_wakes_is_woken(tmp_path: Path, settle: float) -> None:
    # Given a sender that keeps its listing of the listeners between wakes
    import select

    from ivy._sqlite.wake import WakeListener, WakeSender

    directory = str(tmp_path / "wake")
    first = WakeListener(directory)
    sender = WakeSender(directory)
    sender.SETTLE = settle
    listeners = [first]
    try:
        for _ in range(20):
            # When it pokes, a listener joins at once, and it pokes again
            sender.wake()
            listeners.append(WakeListener(directory))
            sender.wake()
            # Then the newcomer was poked (its socket is readable)
            sock = listeners[-1]._sock
            assert sock is not None
            assert select.select([sock], [], [], 5)[0] == [sock]
    finally:
        sender.close()
        for listener in listeners:
            listener.close()
