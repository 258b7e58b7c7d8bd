"""The background batch sender behind asynchronous sends on SQLite: batches form while a write is
in progress, every message's future says how its write went, close() writes what is queued."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from common import wait_for

import ivy
from ivy.queues._batching import BatchSender, Outgoing, Writer


def items(n: int, start: int = 0) -> list[Outgoing]:
    return [Outgoing("q", str(start + i).encode(), 0, 0.0, None) for i in range(n)]


def test_messages_handed_over_during_a_write_go_in_the_next_batch() -> None:
    written: list[list[bytes]] = []
    gate, writing = threading.Event(), threading.Event()

    def write(batch: list[Outgoing]) -> list[BaseException | None]:
        writing.set()
        gate.wait(10)
        written.append([i.body for i in batch])
        return [None] * len(batch)

    sender = BatchSender(write, max_batch=3, name="test-send")
    first = items(1)
    sender.submit(first)
    assert writing.wait(10)
    # While the first write waits, five more arrive: they go out in batches of at most 3
    rest = items(5, start=1)
    for item in rest:
        sender.submit([item])
    gate.set()
    wait_for(lambda: all(i.future.done() for i in first + rest), message="every write")
    assert written == [[b"0"], [b"1", b"2", b"3"], [b"4", b"5"]]
    sender.close()


def test_a_failed_write_fails_its_messages_only() -> None:
    def write(batch: list[Outgoing]) -> list[BaseException | None]:
        if any(i.body == b"bad" for i in batch):
            raise OSError("disk full")
        return [None] * len(batch)

    sender = BatchSender(write, max_batch=10, name="test-send")
    bad = [Outgoing("q", b"bad", 0, 0.0, None)]
    sender.submit(bad)
    with pytest.raises(OSError, match="disk full"):
        bad[0].future.result(10)
    good = items(2)
    sender.submit(good)
    assert [i.future.result(10) for i in good] == [None, None]
    sender.close()
    with pytest.raises(RuntimeError, match="closed"):
        sender.submit(items(1))


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    app = ivy.Ivy(url, url)

    @app.register_task(name="t.x", queue="q")
    def x(n: int) -> int:
        return n

    calls = [app.delayed_call(x, i) for i in range(500)]
    app.close()
    for call in calls:
        call.sent(0)
    checker = ivy.Ivy(url, url)
    assert checker.queue_backend.size("q") == 500
    checker.close()


def test_a_send_that_fails_on_sqlite_fails_its_call(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    app = ivy.Ivy(url, url)

    @app.register_task(name="t.x", queue="q")
    def x(n: int) -> int:
        return n

    # Given a database whose message table is gone (another program broke it)
    app.start_notification_consumer()  # (its schema set-up would create the table again)
    app.queue_backend.db.conn().execute("DROP TABLE ivy_messages")  # type: ignore[attr-defined]
    errors: list[object] = []
    call = app.delayed_call(x, 1, callback=lambda err, result: errors.append(err))
    # Then the call fails loudly instead of waiting for a result that cannot come
    with pytest.raises(ivy.PublishError, match="no such table"):
        call.result(10)
    wait_for(lambda: len(errors) == 1)
    with pytest.raises(ivy.PublishError):
        app.flush(5)
    app.close()


def held_write() -> tuple[Writer, threading.Event, threading.Event]:
    """A write that sets ``writing`` when it starts, then waits for ``gate``."""
    gate, writing = threading.Event(), threading.Event()

    def write(batch: list[Outgoing]) -> list[BaseException | None]:
        writing.set()
        gate.wait(10)
        return [None] * len(batch)

    return write, gate, writing


def test_a_producer_that_finds_the_backlog_full_waits_for_the_next_batch() -> None:
    # Given a sender whose write is held, with room for 3 waiting messages
    write, gate, writing = held_write()
    sender = BatchSender(write, max_batch=3, max_backlog=3, name="test-send")
    sender.submit(items(1))
    assert writing.wait(10)
    sender.submit(items(2, start=1))  # 2 waiting: room left, returns at once
    # When a producer brings the backlog to 3
    returned = threading.Event()
    producer = threading.Thread(target=lambda: (sender.submit(items(1, start=3)),
                                                returned.set()))
    producer.start()
    # Then it waits while the write is held, and goes on once the thread takes the batch
    assert not returned.wait(0.2)
    gate.set()
    assert returned.wait(10)
    producer.join(10)
    sender.close()


def test_the_senders_own_callbacks_and_close_never_wait_on_a_full_backlog() -> None:
    write, gate, writing = held_write()
    sender = BatchSender(write, max_batch=1, max_backlog=1, name="test-send")
    # A callback run by the sender thread sends again while the backlog is full
    first, again = items(1), items(1, start=1)
    first[0].future.add_done_callback(lambda _: sender.submit(again + items(3, start=2)))
    sender.submit(first)
    assert writing.wait(10)
    blocked_done = threading.Event()
    blocked = threading.Thread(target=lambda: (sender.submit(items(1, start=9)),
                                               blocked_done.set()))
    blocked.start()
    assert not blocked_done.wait(0.1)  # a producer waits: the backlog is full
    gate.set()
    wait_for(lambda: again[0].future.done(), message="the callback's send")
    assert again[0].future.result(0) is None
    # close() lets a waiting producer go (its message written or failed, never lost)
    sender.close()
    assert blocked_done.wait(10)
    blocked.join(10)


def test_max_backlog_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_backlog=0"):
        BatchSender(lambda batch: [None] * len(batch), max_batch=1, max_backlog=0,
                    name="test-send")


def test_sqlite_batches_keep_every_message_in_order_with_its_own_fields(tmp_path: Path) -> None:
    import sqlite3

    from ivy.queues.sqlite import SQLiteQueueBackend

    # Given 250 messages handed over at once (written in statements of up to 100 rows)
    backend = SQLiteQueueBackend(str(tmp_path / "ivy.db"))
    futures = backend.send_many("q", [f"m{i}".encode() for i in range(250)], priority=3)
    futures += backend.send_many("later", [b"d"], priority=1, delay=60.0)
    for future in futures:
        future.result(10)
    backend.close()
    # Then each is one row, in the order sent, with its own queue, priority and due time
    conn = sqlite3.connect(tmp_path / "ivy.db")
    rows = conn.execute("SELECT queue, body, priority, available_at - created FROM ivy_messages "
                        "ORDER BY id").fetchall()
    conn.close()
    assert [(q, bytes(b), p) for q, b, p, _ in rows] == (
        [("q", f"m{i}".encode(), 3) for i in range(250)] + [("later", b"d", 1)])
    assert rows[0][3] == 0.0 and rows[-1][3] == pytest.approx(60.0)
