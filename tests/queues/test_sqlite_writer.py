"""Group commit on SQLite (ivy._sqlite.writer): a worker's results and acks are committed by
one writer thread per file and process, in order, a crash never leaves an ack without its
result, and a locked or broken file holds writes back or drops one, never the thread."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from workers import producer_app, start_worker

from ivy._sqlite import writer as writer_module
from ivy._sqlite.database import Database
from ivy._sqlite.writer import Rows, chunk_sizes
from ivy.notifiers.sqlite import SQLiteNotifier
from ivy.queues.sqlite import SQLiteQueueBackend

INSERT = "INSERT INTO ivy_events (body, created) VALUES (?, ?)"


def bodies(db: Database) -> list[bytes]:
    return [bytes(r[0]) for r in db.conn().execute("SELECT body FROM ivy_events ORDER BY seq")]


@contextlib.contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Hold the file's write lock from a connection of another program (no turns)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_writes_from_many_threads_are_committed_in_groups_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(tmp_path / "w.db")
    commits = 0
    write = db.write

    @contextlib.contextmanager
    def counted(conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        nonlocal commits
        with write(conn) as c:
            yield c
        commits += 1

    monkeypatch.setattr(db, "write", counted)
    try:
        # Given 4 threads each submitting 500 writes as fast as they can
        def submit(k: int) -> None:
            for i in range(500):
                db.writer.submit(INSERT, (f"{k}:{i}".encode(), 0.0))

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # When flushed
        assert db.writer.flush(10)
        # Then every write is there, each thread's in the order it submitted them
        rows = [b.decode().split(":") for b in bodies(db)]
        assert len(rows) == 2000
        for k in range(4):
            assert [int(i) for t, i in rows if t == str(k)] == list(range(500))
        # in far fewer transactions than writes
        assert commits < 1000
    finally:
        db.close()


def test_then_runs_after_the_commit_and_wakes_once_per_commit(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    seen: list[int] = []
    pokes: list[int] = []

    class Waker:
        def wake(self) -> None:
            pokes.append(1)

    waker = Waker()
    try:
        # Given the file locked by another program, so that writes pile up
        with write_lock(db.path):
            for i in range(20):
                db.writer.submit(INSERT, (str(i).encode(), 0.0), wake=waker,
                                 then=lambda i=i: seen.append(  # type: ignore[misc]
                                     i if str(i).encode() in bodies(db) else -1))
            assert not db.writer.flush(0.1)  # the writer waits for the lock: nothing ran
            assert seen == [] and pokes == []
        # When the lock is let go, then each then runs once its write is visible, in order
        wait_for(lambda: len(seen) == 20, message="the then callbacks")
        assert seen == list(range(20))
        # and the wake-up of a commit is poked once, not once per write
        assert 1 <= len(pokes) < 20
    finally:
        db.close()


def test_a_locked_file_holds_writes_back_until_it_is_free(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a database whose busy timeout is short
    db = Database(tmp_path / "l.db", busy_timeout=0.1)
    try:
        with write_lock(db.path):
            # When a write is submitted while another program holds the lock for a while
            done = threading.Event()
            db.writer.submit(INSERT, (b"late", 0.0), then=done.set)
            assert not done.wait(0.5)
            assert not db.writer.flush(0.1)
        # Then it is committed once the lock is free, after a logged warning
        assert done.wait(10)
        assert bodies(db) == [b"late"]
        assert "trying again" in caplog.text
    finally:
        db.close()


def test_a_write_that_fails_by_itself_is_dropped_and_the_others_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(tmp_path / "f.db")
    followed: list[str] = []
    try:
        with write_lock(db.path):  # all three in one batch
            db.writer.submit(INSERT, (b"one", 0.0), then=lambda: followed.append("one"))
            db.writer.submit("INSERT INTO no_such_table VALUES (?)", (1,),
                             then=lambda: followed.append("bad"))
            db.writer.submit(INSERT, (b"three", 0.0), then=lambda: followed.append("three"))
        assert db.writer.flush(10)
        assert bodies(db) == [b"one", b"three"]
        assert followed == ["one", "three"]
        assert "no_such_table" in caplog.text and "dropped" in caplog.text
        # a caller that waits gets the error
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            db.writer.write("INSERT INTO no_such_table VALUES (?)", (2,), timeout=10)
    finally:
        db.close()


def test_writes_of_one_kind_are_merged_in_statements_of_few_sizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executed: list[str] = []
    plan = writer_module._statements

    def recorded(chunk: list[Any]) -> list[tuple[str, Any]]:
        statements = plan(chunk)
        executed.extend(sql for sql, _ in statements)
        return statements

    db = Database(tmp_path / "m.db")
    rows = Rows("INSERT INTO ivy_events (body, created) VALUES {rows}", "(?, ?)")
    try:
        # Given the writer thread held in the then callback of a first write
        held, gate = threading.Event(), threading.Event()
        db.writer.submit(INSERT, (b"gate", 0.0), then=lambda: (held.set(), gate.wait(10)))
        assert held.wait(10)
        monkeypatch.setattr(writer_module, "_statements", recorded)
        # When 75 writes of one kind come, and two others (everything in the next batch)
        db.writer.submit(INSERT, (b"first", 0.0))  # not of the kind: stays first
        for i in range(75):
            db.writer.submit(rows, (f"r{i}".encode(), 0.0))
            if i == 0:
                db.writer.submit(INSERT, (b"between", 0.0))
        gate.set()
        assert db.writer.flush(10)
        # Then the 75 go in 4 statements (64, 8, 2 and 1 rows) at the place of the first
        assert executed == [INSERT, rows.many(64), rows.many(8), rows.many(2), rows.many(1),
                            INSERT]
        assert executed[1].count("(?, ?)") == 64
        # and in order, every row there
        assert bodies(db) == [b"gate", b"first", *(f"r{i}".encode() for i in range(75)),
                              b"between"]
    finally:
        gate.set()
        db.close()
    assert [n for n in (0, 1, 63, 64, 65, 200) if sum(chunk_sizes(n, 64)) != n] == []


def test_a_stale_ack_merged_with_others_deletes_only_its_own_lease(tmp_path: Path) -> None:
    backend = SQLiteQueueBackend(str(tmp_path / "a.db"))
    try:
        for body in (b"a", b"b", b"c"):
            backend.publish("q", body)
        consumer = backend.consume("q", prefetch=3, reserve_time=30.0)
        deliveries = [consumer.get(5) for _ in range(3)]
        assert all(d is not None for d in deliveries)
        a, b, c = deliveries
        assert a is not None and b is not None and c is not None
        # Given c's lease taken over by someone else (its lease ran out, another worker
        # fetched it: a new token)
        backend.db.execute("UPDATE ivy_messages SET token = 'other' WHERE body = ?", (b"c",))
        # When the three acks are committed together, in one statement (the writer thread
        # held meanwhile in the then callback of another write)
        held, gate = threading.Event(), threading.Event()
        backend.db.writer.submit("SELECT 1", (), then=lambda: (held.set(), gate.wait(10)))
        assert held.wait(10)
        for delivery in (a, b, c):
            delivery.ack()
        gate.set()
        assert backend.db.flush_writes(10)
        # Then a and b are gone, and c, held by the other lease, stays
        rows = backend.db.conn().execute("SELECT body FROM ivy_messages").fetchall()
        assert [bytes(r[0]) for r in rows] == [b"c"]
        consumer.close()
    finally:
        backend.close()


def test_a_raising_then_does_not_stop_the_writer(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    db = Database(tmp_path / "r.db")
    try:
        def boom() -> None:
            raise ValueError("boom in then")

        db.writer.submit(INSERT, (b"a", 0.0), then=boom)
        db.writer.write(INSERT, (b"b", 0.0), timeout=10)
        assert bodies(db) == [b"a", b"b"]
        wait_for(lambda: "boom in then" in caplog.text, message="the logged error")
    finally:
        db.close()


def test_close_gives_up_on_a_file_that_stays_locked(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    db = Database(tmp_path / "c.db", busy_timeout=0.05)
    caplog.set_level(logging.ERROR)
    with write_lock(db.path):
        followed: list[int] = []
        db.writer.submit(INSERT, (b"never", 0.0), then=lambda: followed.append(1))
        waiter_error: list[BaseException] = []

        def wait() -> None:
            try:
                db.writer.write(INSERT, (b"never either", 0.0), timeout=30)
            except Exception as exc:
                waiter_error.append(exc)

        waiting = threading.Thread(target=wait)
        waiting.start()
        started = time.monotonic()
        db.writer.close(0.5)
        waiting.join(10)
        assert time.monotonic() - started < 5
    assert followed == []
    assert waiter_error and not isinstance(waiter_error[0], TimeoutError)
    assert "2 writes not committed" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        db.writer.submit(INSERT, (b"after", 0.0))
    db.close()


def test_backends_on_one_file_share_one_database(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    queue, notifier = SQLiteQueueBackend(path), SQLiteNotifier(path)
    try:
        assert queue.db is notifier.db
        queue.close()
        queue.close()  # twice: still one use
        # the notifier's use keeps it open
        notifier.publish("c", "id1", b"{}", final=True)
        assert notifier.stored("id1") == b"{}"
    finally:
        notifier.close()
    assert queue.db._closed
    # a new backend on the file gets a new database
    again = SQLiteQueueBackend(path)
    try:
        assert again.db is not queue.db and again.size("q") == 0
    finally:
        again.close()


def test_an_ack_read_back_in_the_same_process_is_seen(tmp_path: Path) -> None:
    backend = SQLiteQueueBackend(str(tmp_path / "a.db"))
    try:
        backend.publish("q", b"x")
        consumer = backend.consume("q")
        delivery = consumer.get(5)
        assert delivery is not None
        delivery.ack()  # handed to the writer thread
        assert backend.size("q") == 0  # size() waits for this process's writes
        consumer.close()
    finally:
        backend.close()


def test_a_killed_worker_never_leaves_an_ack_without_its_result(tmp_path: Path) -> None:
    # Given a worker process draining many short calls, results and acks in groups
    url = f"sqlite:///{tmp_path / 'k.db'}"
    app = producer_app(url, url)
    try:
        # (enough that the kill lands while most are still to run, whatever the machine)
        calls = app.delayed_calls("proc.factorial", [[5]] * 20_000)
        app.flush(30)
        ids = {call.id for call in calls}
        worker = start_worker(url, url)
        conn = sqlite3.connect(str(tmp_path / "k.db"))

        def left() -> int:
            return int(conn.execute("SELECT count(*) FROM ivy_messages").fetchone()[0])

        # When it is SIGKILLed early on
        wait_for(lambda: left() < 19_000, timeout=60, message="the worker to run 1,000 calls")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        # Then every message that is gone has its result stored: none was acked without it
        remaining = {json.loads(r[0])["id"] for r in conn.execute(
            "SELECT body FROM ivy_messages")}
        stored = {r[0] for r in conn.execute(
            "SELECT call_id FROM ivy_notifications WHERE final = 1")}
        gone = ids - remaining
        assert 0 < len(gone) < 20_000
        assert gone <= stored, f"{len(gone - stored)} acked without a result"
        conn.close()
    finally:
        app.close()


def test_a_consumer_fetches_more_rows_at_a_time_while_tasks_are_quick(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ivy.queues.sqlite as sqlite_queue

    now = [1000.0]
    monkeypatch.setattr(sqlite_queue, "_clock", lambda: now[0])
    backend = SQLiteQueueBackend(str(tmp_path / "b.db"))
    try:
        backend.publish_many("q", [str(i).encode() for i in range(400)])
        consumer = backend.consume("q", prefetch=2)
        seen: list[bytes] = []

        def batch(work: float) -> int:
            """Take one fetched batch, each delivery taking ``work`` s; its size."""
            first = consumer.get(5)
            assert first is not None
            taken = [first, *consumer.buffered()]
            for d in taken[1:]:
                assert consumer.get(5) is d  # served from the buffer, in order
            for d in taken:
                seen.append(d.body)
                d.ack()
                now[0] += work
            return len(taken)

        # Given tasks of 0.1 ms, each used-up batch doubles the next, up to 8 x prefetch
        sizes = [batch(0.0001) for _ in range(6)]
        assert sizes == [2, 4, 8, 16, 16, 16]
        # When tasks take 10 ms, a batch that lasted 4 x 5 ms halves the next, back to prefetch
        sizes = [batch(0.010) for _ in range(4)]
        assert sizes == [16, 8, 4, 2]
        # and every row came once, in order
        consumer.close()
        assert seen == [str(i).encode() for i in range(92)]
        assert backend.size("q") == 400 - 92
    finally:
        backend.close()


def test_an_app_closes_its_notifiers_before_its_queue_backends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A SQLite notifier closing writes what it holds and acks those messages through the
    # queue backend, so that one must still be open: whatever order they were made in
    import ivy

    closed: list[str] = []
    for queue_first in (True, False):
        closed.clear()
        queue_url = f"sqlite:///{tmp_path / f'q{queue_first}.db'}"
        notifier_url = f"sqlite:///{tmp_path / f'n{queue_first}.db'}"
        app = ivy.Ivy(queue_url, notifier_url)
        if queue_first:
            backend = app.queue_backend
            notifier = app.start_notification_producer()
        else:
            notifier = app.start_notification_producer()
            backend = app.queue_backend
        for thing, name in ((backend, "queue"), (notifier, "notifier")):
            real = thing.close
            monkeypatch.setattr(thing, "close", lambda real=real, name=name: (
                closed.append(name), real()))
        app.close()
        assert closed == ["notifier", "queue"], queue_first


def test_a_then_callback_may_write_and_wait_itself(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # (a then callback that publishes a notification synchronously would otherwise wait for
    # the writer thread it runs on)
    db = Database(tmp_path / "self.db")
    try:
        flushed: list[bool] = []
        db.writer.submit(INSERT, (b"first", 0.0), then=lambda: db.writer.write(
            INSERT, (b"from then", 0.0), timeout=5))
        # and a flush from there returns at once (False: it cannot wait for itself)
        db.writer.submit(INSERT, (b"second", 0.0),
                         then=lambda: flushed.append(db.writer.flush(None)))
        assert db.writer.flush(10)
        assert sorted(bodies(db)) == [b"first", b"from then", b"second"]
        assert flushed == [False]
        assert "failed" not in caplog.text  # the write did not time out waiting for itself
    finally:
        db.close()
