"""The SQLite file that the embedded queue and notifier share (ivy._sqlite.database.Database): its
checkpoints run off the writers' threads, and ivy's writers take turns on a file lock."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import tempfile
import threading
import time
import weakref
from pathlib import Path

import pytest
from common import wait_for

from ivy._sqlite import database as _sqlite
from ivy._sqlite.database import CHECKPOINT_EVERY, Database
from ivy.queues.sqlite import SQLiteQueueBackend


def test_commits_leave_checkpoints_to_the_checkpoint_thread(tmp_path: Path) -> None:
    # Given a database whose connections never checkpoint on commit
    db = Database(tmp_path / "c.db")
    try:
        assert db.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        main_file = tmp_path / "c.db"
        before = main_file.stat().st_size
        # When many commits go to the write-ahead log (each on its own, as a worker's)
        for i in range(3000):
            db.execute("INSERT INTO ivy_events (body, created) VALUES (?, ?)",
                       (b"x" * 200, float(i)))
        # Then the checkpoint thread copies them into the database file by itself (nothing
        # else here checkpoints: the commits don't, and no connection closed)
        wait_for(lambda: main_file.stat().st_size > before + 3000 * 200,
                 message="the checkpoint thread to copy the log into the file")
    finally:
        db.close()


def test_the_write_ahead_log_stays_small_under_steady_writes(tmp_path: Path) -> None:
    # Given a queue backend on a file, written to by many small commits over a while
    backend = SQLiteQueueBackend(str(tmp_path / "q.db"))
    wal = tmp_path / "q.db-wal"
    try:
        largest = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            backend.publish("q", b"y" * 500)
            if wal.exists():
                largest = max(largest, wal.stat().st_size)
        published = backend.size("q")
        # Then the log is reused once checkpointed instead of holding every commit (~3 pages
        # each): without checkpoints it would reach published * 3 * 4 KiB
        assert published > 2000
        assert largest < published * 3 * 4096 / 4
    finally:
        backend.close()


def test_closing_a_database_while_it_checkpoints_is_safe(tmp_path: Path) -> None:
    # The checkpoint thread uses a connection of its own: close() waits for it to stop
    # before closing the connections (closing one under a running statement can crash)
    for round_ in range(10):
        db = Database(tmp_path / f"close{round_}.db")
        wal = Path(db.path + "-wal")
        started = time.monotonic()
        while time.monotonic() - started < CHECKPOINT_EVERY * (1 + round_ % 3) or not (
                wal.exists() and wal.stat().st_size > 1_000_000):
            db.execute("INSERT INTO ivy_events (body, created) VALUES (?, ?)", (b"z" * 300, 0.0))
        db.close()
        assert not any(t.name == "ivy-sqlite-checkpoint" and t.is_alive()
                       for t in threading.enumerate() if t is db._checkpoints)


def test_writers_of_one_file_take_turns(tmp_path: Path) -> None:
    # Given two database objects on one file (two processes, or a queue and a notifier)
    first, second = Database(tmp_path / "t.db"), Database(tmp_path / "t.db")
    order: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with first.write() as conn:
            conn.execute("INSERT INTO ivy_events (body, created) VALUES (x'01', 0)")
            order.append("first in")
            entered.set()
            release.wait(5)
            order.append("first out")

    try:
        holder = threading.Thread(target=hold)
        holder.start()
        assert entered.wait(5)
        # When another thread writes meanwhile
        writer = threading.Thread(target=lambda: (
            second.execute("INSERT INTO ivy_events (body, created) VALUES (x'02', 0)"),
            order.append("second wrote")))
        writer.start()
        writer.join(0.2)
        # Then it waits for the turn (not for SQLite's lock: it has not asked yet) ...
        assert writer.is_alive()
        release.set()
        holder.join(5)
        writer.join(5)
        # ... and writes once the first writer's turn ended
        assert order == ["first in", "first out", "second wrote"]
        assert second.conn().execute("SELECT count(*) FROM ivy_events").fetchone()[0] == 2
    finally:
        release.set()
        first.close()
        second.close()


def test_a_writer_that_takes_turn_after_turn_lets_a_waiting_one_in(tmp_path: Path) -> None:
    # Given a writer taking its turn again the moment it ends one (a producer's sender
    # thread during a burst), each turn 2 ms long
    busy, other = Database(tmp_path / "f.db"), Database(tmp_path / "f.db")
    stop = threading.Event()
    busy_turns = 0

    def hammer() -> None:
        nonlocal busy_turns
        while not stop.is_set():
            with busy.turn():
                busy_turns += 1
                stop.wait(0.002)  # a transaction's work

    hammering = threading.Thread(target=hammer)
    hammering.start()
    try:
        wait_for(lambda: busy_turns > 3, message="the busy writer to start")
        # When another writer takes 20 turns meanwhile
        waited: list[int] = []
        for _ in range(20):
            seen = busy_turns
            wait_for(lambda seen=seen: busy_turns > seen, message="the busy writer's next turn")
            before = busy_turns
            with other.turn():
                waited.append(busy_turns - before)
        # Then it waits for the busy writer's current turn, rarely more: the busy writer
        # pauses after a turn that someone waited for (polling alone, the other writer
        # caught the few microseconds between two turns once in dozens)
        assert sorted(waited)[10] <= 3, waited
    finally:
        stop.set()
        hammering.join(5)
        busy.close()
        other.close()


def test_a_turn_inside_a_turn_is_the_same_turn(tmp_path: Path) -> None:
    db = Database(tmp_path / "n.db")
    try:
        with db.turn(), db.write() as conn:  # in a turn, a transaction and statements
            conn.execute("INSERT INTO ivy_events (body, created) VALUES (x'01', 0)")
            rows = db.returning("DELETE FROM ivy_events RETURNING seq")
            assert db.execute("INSERT INTO ivy_events (body, created) VALUES (x'02', 0)") == 1
        assert rows == [(1,)]  # in the open transaction, without waiting for itself
        assert db.conn().execute("SELECT body FROM ivy_events").fetchall() == [(b"\x02",)]
    finally:
        db.close()


def test_a_turn_file_that_is_a_link_is_not_used(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a link where the turn file would be (another user could hold such a file
    # locked forever): temporary files go to tmp_path here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = str(tmp_path / "linked.db")
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    os.symlink(tmp_path / "elsewhere", tmp_path / f"ivy-turn-{digest}")
    db = Database(path)
    try:
        # Then ivy's writers take no turns, commits checkpoint as SQLite does by default ...
        assert not db.turns
        assert db.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0
        assert not (tmp_path / "elsewhere").exists()
        # ... and writes still go through, with SQLite's own locking only
        assert db.execute("INSERT INTO ivy_events (body, created) VALUES (x'01', 0)") == 1
        with db.write() as conn:
            conn.execute("INSERT INTO ivy_events (body, created) VALUES (x'02', 0)")
        assert db.conn().execute("SELECT count(*) FROM ivy_events").fetchone()[0] == 2
    finally:
        db.close()


def test_without_file_locks_writes_still_go_through(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "_fcntl", None)  # Windows has no fcntl
    db = Database(tmp_path / "nofcntl.db")
    try:
        assert not db.turns
        assert db.execute("INSERT INTO ivy_events (body, created) VALUES (x'01', 0)") == 1
        assert db.returning("DELETE FROM ivy_events RETURNING seq") == [(1,)]
    finally:
        db.close()


def test_a_writer_paused_in_its_turn_stalls_others_only_for_the_busy_timeout(
        tmp_path: Path) -> None:
    # Given a writer that took its turn and then stopped (paused, say), holding only the turn
    db = Database(tmp_path / "paused.db", busy_timeout=0.3)
    paused = os.open(db._turn_path, os.O_RDWR)
    fcntl.flock(paused, fcntl.LOCK_EX)
    try:
        # When another writer writes, it waits for the turn no longer than the busy timeout,
        # then asks SQLite itself (free here), instead of waiting forever
        started = time.monotonic()
        assert db.execute("INSERT INTO ivy_events (body, created) VALUES (x'01', 0)") == 1
        assert time.monotonic() - started >= 0.3
        # And once the turn is let go, writers take it again at once
        fcntl.flock(paused, fcntl.LOCK_UN)
        with db.write() as conn:
            conn.execute("INSERT INTO ivy_events (body, created) VALUES (x'02', 0)")
        assert db.conn().execute("SELECT count(*) FROM ivy_events").fetchone()[0] == 2
    finally:
        os.close(paused)
        db.close()


def test_a_database_never_closed_is_still_collected_and_its_thread_ends(tmp_path: Path) -> None:
    # Given a database that is written to and then dropped without close()
    db = Database(tmp_path / "dropped.db")
    db.execute("INSERT INTO ivy_events (body, created) VALUES (x'01', 0)")
    thread, turn_fd = db._checkpoints, db._local.turn_fd
    assert thread.is_alive()
    ref = weakref.ref(db)
    del db
    gc.collect()
    # Then nothing keeps it alive (its checkpoint thread holds it weakly), its thread ends and
    # its turn file's descriptor is closed
    assert ref() is None
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(OSError):
        os.fstat(turn_fd)
