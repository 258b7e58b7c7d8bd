"""What follows a record waits for it (issue 20, rows 1 and 6): a dead letter is written only
once the error it follows is stored, so that a worker killed in between runs the message again
rather than leaving a dead letter without its result; and a message that is rejected lets go
of its unique key. The SQLite writer thread is held from inside the task (a ``then`` callback
that waits), which puts the worker exactly between the hand-over and the commit."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import wait_for

import ivy
from ivy.timing.keys import UNIQUE_PREFIX

Q = "q"


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[tuple[ivy.Ivy, Path]]:
    path = tmp_path / "ivy.db"
    app = ivy.Ivy(f"sqlite:///{path}", f"sqlite:///{path}", retry_base_delay=0.01,
                  retry_max_delay=0.05)
    yield app, path
    app.close()


class HeldWriter:
    """Holds a database's writer thread inside a ``then`` callback until :meth:`release`."""

    def __init__(self, app: ivy.Ivy) -> None:
        self.db = app.queue_backend.db  # type: ignore[attr-defined]
        self.held = threading.Event()
        self.released = threading.Event()

    def hold(self) -> None:
        def wait() -> None:
            self.held.set()
            self.released.wait(30)

        self.db.writer.submit("DELETE FROM ivy_workers WHERE name = ?", ("-",), then=wait)
        assert self.held.wait(10), "the writer thread did not take the held write"

    def release(self) -> None:
        self.released.set()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_a_dead_letter_waits_for_the_stored_error(
        sqlite_app: tuple[ivy.Ivy, Path], caplog: pytest.LogCaptureFixture) -> None:
    # Given a task that fails both of its attempts, the writer held during the last one
    app, path = sqlite_app
    writer = HeldWriter(app)
    runs: list[int] = []

    @app.register_task(name="t.doomed", queue=Q, max_retries=1)
    def doomed() -> None:
        runs.append(1)
        if len(runs) == 2:
            writer.hold()
        raise ValueError("broken for good")

    app.listen(queue=Q, block=False)
    try:
        call = app.send_task("t.doomed", [])
        # When the worker has settled the last attempt while its error is not yet stored
        wait_for(lambda: "dead-lettered" in caplog.text, timeout=20,
                 message="the worker to settle the last attempt")
        # Then the message is not dead-lettered yet: it is still leased in the queue
        assert rows(path, "SELECT count(*) FROM ivy_dead_letters") == [(0,)]
        assert rows(path, "SELECT count(*) FROM ivy_notifications WHERE final = 1") == [(0,)]
        assert rows(path, "SELECT count(*) FROM ivy_messages") == [(1,)]
    finally:
        writer.release()
    # and once the error is stored, the dead letter follows, and the caller has its error
    with pytest.raises(ivy.RemoteTaskError, match="broken for good"):
        call.result(20)
    wait_for(lambda: rows(path, "SELECT count(*) FROM ivy_dead_letters") == [(1,)],
             timeout=20, message="the dead letter")
    assert rows(path, "SELECT count(*) FROM ivy_messages") == [(0,)]


def test_a_rejected_workflow_step_is_dead_lettered_after_its_failure_is_stored(
        sqlite_app: tuple[ivy.Ivy, Path], caplog: pytest.LogCaptureFixture) -> None:
    # Given a chain whose second step names a task no worker registers
    app, path = sqlite_app
    writer = HeldWriter(app)

    @app.register_task(name="t.first", queue=Q)
    def first() -> int:
        writer.hold()  # the next step is sent at once; its failure will wait
        return 1

    app.listen(queue=Q, block=False)
    try:
        call = app.send_task(ivy.chain(ivy.signature("t.first"),
                                       ivy.signature("t.unknown", queue=Q)), [])
        # When the worker rejects the unknown step while the writer is held
        wait_for(lambda: "dead-lettering a message" in caplog.text, timeout=20,
                 message="the worker to reject the unknown step")
        # Then the step is not dead-lettered before the workflow's failure is stored
        assert rows(path, "SELECT count(*) FROM ivy_dead_letters") == [(0,)]
    finally:
        writer.release()
    with pytest.raises(ivy.RemoteTaskError, match=r"unknown task 't\.unknown'"):
        call.result(20)
    wait_for(lambda: rows(path, "SELECT count(*) FROM ivy_dead_letters") == [(1,)],
             timeout=20, message="the dead letter")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_rejected_message_lets_go_of_its_unique_key(backend: str, tmp_path: Path) -> None:
    # Given a unique send of a task that no worker registers
    url = (f"memory://unique-{tmp_path.name}" if backend == "memory"
           else f"sqlite:///{tmp_path / 'ivy.db'}")
    producer = ivy.Ivy(url, url)
    worker_app = ivy.Ivy(url, url)
    worker_app.register_task(lambda: None, name="t.other", queue=Q)
    try:
        worker_app.listen(queue=Q, block=False)
        call = producer.send_task("t.missing", [], queue=Q, unique_key="k", unique_for=3600)
        # When the worker dead-letters it
        with pytest.raises(ivy.RemoteTaskError, match="unknown task"):
            call.result(20)
        notifier = producer.producer.results().notifier
        assert notifier is not None
        # Then its key is free at once: the next send sends again
        wait_for(lambda: notifier.get_keys([UNIQUE_PREFIX + "k"]) == [None], timeout=10,
                 message="the unique key to be released")
        again = producer.send_task("t.missing", [], queue=Q, unique_key="k", unique_for=3600)
        assert again.id != call.id
        with pytest.raises(ivy.RemoteTaskError, match="unknown task"):
            again.result(20)
        # (each dead letter follows its stored result: it may come a moment later)
        wait_for(lambda: [json.loads(d.body)["id"] for d in producer.dead_letters(Q)]
                 == [call.id, again.id], timeout=10, message="both dead letters")
    finally:
        producer.close()
        worker_app.close()
