"""The background batch sender behind asynchronous sends on SQLite: batches form while a write is
in progress, every message's future says how its write went, close() writes what is queued."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import wait_for

import ivy
from ivy.queues._batching import BatchSender, Outgoing


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
