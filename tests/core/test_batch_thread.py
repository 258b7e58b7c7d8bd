"""The machinery shared by the background batch writers (ivy._batch_thread): batches form while a
write is in progress, the thread ends when idle and the next item starts another, flush() waits
for the batch being written, close() writes what waits and then refuses, a bounded backlog
holds up a submitter but never the writer's own thread."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

import pytest
from common import wait_for

from ivy._batch_thread import BatchThread

_names = itertools.count()


class Refused(Exception):
    pass


class Recorder(BatchThread[int]):
    """Records each batch; a write waits for ``gate`` (open unless a test closes it)."""

    def __init__(self, **options: Any) -> None:
        self.name = f"test-batch-{next(_names)}"
        super().__init__(name=self.name, **{"max_batch": 100, **options})
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.late: list[float] = []
        self.during: Any = None  # called by the writer's thread in each write, before the gate

    def submit(self, *items: int) -> None:
        self._enqueue(list(items))

    def _write_batch(self, batch: list[int]) -> None:
        self.writing.set()
        if self.during is not None:
            self.during(batch)
        assert self.gate.wait(10)
        self.batches.append(list(batch))

    def _refusal(self) -> Exception:
        return Refused(f"{self.name} is closed")

    def _closed_late(self, timeout: float) -> None:
        self.late.append(timeout)

    def written(self) -> list[int]:
        return [item for batch in self.batches for item in batch]

    def thread_alive(self) -> bool:
        return any(t.name == self.name for t in threading.enumerate())


def held(**options: Any) -> Recorder:
    """A writer whose first write (of item 0) has started and waits for its gate."""
    writer = Recorder(**options)
    writer.gate.clear()
    writer.submit(0)
    assert writer.writing.wait(10)
    return writer


def in_thread(target: Any) -> tuple[threading.Thread, threading.Event]:
    """Run ``target`` on a thread of its own; the event is set once it returned."""
    returned = threading.Event()
    thread = threading.Thread(target=lambda: (target(), returned.set()), daemon=True)
    thread.start()
    return thread, returned


def test_items_handed_over_during_a_write_go_in_the_next_batches() -> None:
    writer = held(max_batch=3)
    for item in range(1, 6):
        writer.submit(item)
    writer.gate.set()
    wait_for(lambda: writer.written() == [0, 1, 2, 3, 4, 5], message="every write")
    assert writer.batches == [[0], [1, 2, 3], [4, 5]]
    writer.close()


def test_the_thread_ends_when_idle_and_the_next_item_starts_another() -> None:
    writer = Recorder(idle=0.05)
    writer.submit(1)
    wait_for(lambda: writer.written() == [1], message="the first write")
    wait_for(lambda: not writer.thread_alive(), message="the idle thread to end")
    writer.submit(2)
    wait_for(lambda: writer.written() == [1, 2], message="a write by a new thread")
    assert writer.flush(10)
    writer.close()


def test_flush_waits_for_the_batch_being_written_not_only_those_waiting() -> None:
    writer = held()
    # Nothing waits (the thread took item 0), yet its write is not done
    assert not writer.flush(0.1)
    _, flushed = in_thread(lambda: writer.flush(10))
    assert not flushed.wait(0.1)
    writer.gate.set()
    assert flushed.wait(10)
    assert writer.written() == [0]
    writer.close()


def test_flush_on_the_writers_own_thread_does_not_wait_for_itself() -> None:
    writer = Recorder()
    answers: list[bool] = []
    writer.during = lambda batch: answers.append(writer.flush(10))
    writer.submit(1)
    assert writer.flush(10)
    assert answers == [True]  # at once, not after 10 s: nothing else waited
    writer.close()


def test_close_writes_what_waits_then_refuses() -> None:
    writer = held(max_batch=2)
    writer.submit(1, 2, 3)
    _, closed = in_thread(lambda: writer.close(10))
    assert not closed.wait(0.1)  # it waits for the write in progress and what waits
    writer.gate.set()
    assert closed.wait(10)
    assert writer.written() == [0, 1, 2, 3]
    assert writer.late == []
    assert writer.closed
    with pytest.raises(Refused):
        writer.submit(4)
    wait_for(lambda: not writer.thread_alive(), message="the thread to end at close")


def test_close_that_runs_out_of_time_says_so_and_the_thread_still_writes_what_waits() -> None:
    writer = held()
    writer.submit(1)
    writer.close(0.05)
    assert writer.late == [0.05]
    with pytest.raises(Refused):
        writer.submit(2)
    writer.gate.set()
    wait_for(lambda: writer.written() == [0, 1], message="what waited at close")
    wait_for(lambda: not writer.thread_alive(), message="the thread to end")


def test_a_full_backlog_holds_up_a_submitter_but_not_the_writers_own_thread() -> None:
    writer = Recorder(max_batch=2, max_backlog=2)
    writer.gate.clear()
    full, handed = threading.Event(), threading.Event()

    def again(batch: list[int]) -> None:  # on the writer's thread, in its first write
        if batch == [0]:
            assert full.wait(10)
            writer.submit(10, 11, 12)
            handed.set()
    writer.during = again
    writer.submit(0)
    assert writer.writing.wait(10)
    writer.submit(1)  # 1 waiting: room left, returns at once
    # A submitter that brings the backlog to 2 waits, its item queued
    _, returned = in_thread(lambda: writer.submit(2))
    assert not returned.wait(0.2)
    # The writer's own thread hands over more while the backlog is full: it does not wait
    full.set()
    assert handed.wait(10)
    assert not returned.is_set()
    writer.gate.set()
    assert returned.wait(10)
    assert writer.flush(10)
    assert writer.batches == [[0], [1, 2], [10, 11], [12]]
    writer.close()


def test_close_lets_a_submitter_waiting_for_room_go() -> None:
    writer = held(max_backlog=1)
    _, returned = in_thread(lambda: writer.submit(1))
    assert not returned.wait(0.1)
    writer.close(0.05)  # the write is still held: out of time
    assert returned.wait(10)
    writer.gate.set()
    wait_for(lambda: writer.written() == [0, 1], message="the waiting submitter's item")


def test_max_backlog_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_backlog=0"):
        Recorder(max_backlog=0)


def test_a_write_claimed_by_the_caller_counts_until_released() -> None:
    writer = Recorder()
    # Idle: the caller is told to write itself, and nothing is queued
    assert writer._claim_or_enqueue([1]) is True
    # Meanwhile another item is not claimed: it is queued for the thread
    assert writer._claim_or_enqueue([2]) is False
    wait_for(lambda: writer.written() == [2], message="the thread's write")
    assert not writer.flush(0.05)  # the claimed write is still in progress
    _, flushed = in_thread(lambda: writer.flush(10))
    assert not flushed.wait(0.05)
    # The caller could not write it: it hands it to the thread, then releases its claim
    writer._hand_over([1])
    writer._release()
    assert flushed.wait(10)
    assert writer.written() == [2, 1]
    writer.close()
    with pytest.raises(Refused):
        writer._claim_or_enqueue([3])


def test_a_pause_between_tries_ends_at_close() -> None:
    writer = Recorder()
    assert writer._wait_closed(0.01) is False
    _, woke = in_thread(lambda: writer._wait_closed(30))
    writer.close()
    assert woke.wait(10)


def test_a_write_that_raises_is_logged_and_the_thread_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    writer = Recorder()

    def fail(batch: list[int]) -> None:
        if batch == [1]:
            raise OSError("disk full")
    writer.during = fail
    with caplog.at_level(logging.ERROR, logger="ivy"):
        writer.submit(1)
        wait_for(lambda: "writing 1 item(s) failed" in caplog.text, message="the log")
        writer.submit(2)
        wait_for(lambda: writer.written() == [2], message="the next write")
    assert writer.flush(10)
    writer.close()


class Unreachable(Exception):
    pass


def test_try_for_tries_again_while_unreachable_and_returns_what_the_write_gave() -> None:
    writer = Recorder()
    tries: list[int] = []

    def write() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise Unreachable("down")
        return "written"

    logger = logging.getLogger("test.try_for")
    assert writer._try_for(write, Unreachable, 30, "2 ack(s)", "db", logger) == "written"
    assert len(tries) == 3


def test_try_for_gives_up_after_its_seconds_and_says_what_was_not_written(
        caplog: pytest.LogCaptureFixture) -> None:
    writer = Recorder()

    def write() -> None:
        raise Unreachable("down")

    with caplog.at_level(logging.ERROR, "test.try_for"):
        assert writer._try_for(write, Unreachable, 0.2, "2 ack(s)", "db",
                               logging.getLogger("test.try_for")) is None
    assert "2 ack(s) not written to db (down)" in caplog.text


def test_try_for_stops_at_once_when_the_writer_closes_and_lets_other_errors_through() -> None:
    writer = Recorder()
    writer.close()
    logger = logging.getLogger("test.try_for")

    tries: list[int] = []

    def down() -> None:
        tries.append(1)
        raise Unreachable("down")

    assert writer._try_for(down, Unreachable, 30, "1 ack(s)", "db", logger) is None
    assert tries == [1]  # not tried again for 30 s

    def refused() -> None:
        raise Refused("no")

    with pytest.raises(Refused):
        writer._try_for(refused, Unreachable, 30, "1 ack(s)", "db", logger)
