"""The relay (issue 24, part 3): a transactional outbox in PostgreSQL moved to another queue
backend, in process (:class:`ivy.relay.Relay`) and as ``ivy relay`` (SIGKILLed mid-run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from contract import take
from servers import free_port

import ivy
from ivy.config import make_queue_backend
from ivy.queues.base import QueueBackend

psycopg = pytest.importorskip("psycopg", reason="pip install 'ivy-queue[postgres]'")


from ivy.queues.postgres import PostgresQueueBackend  # noqa: E402
from ivy.relay import Relay  # noqa: E402


def qname() -> str:
    return f"relay-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def source(postgres_url: str) -> Iterator[PostgresQueueBackend]:
    backend = make_queue_backend(postgres_url)
    assert isinstance(backend, PostgresQueueBackend)
    yield backend
    backend.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[QueueBackend]:
    backend = make_queue_backend(f"sqlite:///{tmp_path / 'target.db'}")
    yield backend
    backend.close()


class Running:
    """A relay on its own thread, stopped and joined by :meth:`close`."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.thread = threading.Thread(target=relay.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.relay.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def bodies_of(target: QueueBackend, queue: str, n: int) -> list[bytes]:
    consumer = target.consume(queue, prefetch=100)
    try:
        got = take(consumer, n, timeout=20)
        return got
    finally:
        consumer.close()


def test_an_app_enqueues_in_its_transaction_and_its_workers_run_elsewhere(
        postgres_url: str, pg_url: str, tmp_path: Path) -> None:
    # Given a producer on PostgreSQL, its workers on another backend (SQLite here), one
    # notifier for both, and a relay between the two queues
    q = qname()
    notifier = f"sqlite:///{tmp_path / 'results.db'}"
    worker_url = f"sqlite:///{tmp_path / 'work.db'}"
    producer = ivy.Ivy(postgres_url, notifier)
    workers = ivy.Ivy(worker_url, notifier)
    ran: list[int] = []

    @workers.register_task(name="relay.double", queue=q)
    def double(n: int) -> int:
        ran.append(n)
        return 2 * n

    producer.registry.add(double)
    source, target = producer.queue_backend, workers.queue_backend
    assert isinstance(source, PostgresQueueBackend)
    relay = Running(Relay(source, target, [q]))
    try:
        workers.listen(queue=q, concurrency=1, block=False)
        # When calls are sent inside the application's transactions, one of them rolled back
        with psycopg.connect(pg_url) as conn:
            with producer.transaction(conn):
                kept = [producer.delayed_call(double, i) for i in range(5)]
            conn.commit()
            with producer.transaction(conn):
                dropped = producer.delayed_call(double, 99)
            conn.rollback()
        plain = producer.delayed_call(double, 7)
        # Then the committed ones run on the other backend, in order, with their results
        assert [c.result(30) for c in kept] == [0, 2, 4, 6, 8]
        assert plain.result(30) == 14
        with pytest.raises(ivy.TransactionRolledBack):
            dropped.result(10)
        assert ran == [0, 1, 2, 3, 4, 7]
        wait_for(lambda: source.size(q) == 0, message="the moved rows deleted")
    finally:
        relay.close()
        producer.close()
        workers.close()


def test_order_priority_and_delay_carry_over(source: PostgresQueueBackend,
                                             target: QueueBackend) -> None:
    q = qname()
    source.publish_many(q, [f"m{i}".encode() for i in range(50)])
    source.publish(q, b"later", delay=1.5)
    source.publish(q, b"urgent", priority=9)
    relay = Relay(source, target, [q], batch=20)
    moved = 0
    while moved < 52:
        moved += relay.move(q)
    # the due ones arrive at once, the urgent first, then the others in order; the delayed
    # one keeps (the rest of) its delay
    assert bodies_of(target, q, 51) == [b"urgent"] + [f"m{i}".encode() for i in range(50)]
    consumer = target.consume(q)
    try:
        assert consumer.get(0.5) is None
        assert take(consumer, 1, timeout=5) == [b"later"]
    finally:
        consumer.close()
    assert source.size(q) == 0


def test_a_target_that_does_not_confirm_keeps_the_rows(source: PostgresQueueBackend,
                                                        target: QueueBackend) -> None:
    q = qname()
    source.publish_many(q, [b"a", b"b", b"c"])
    down = make_queue_backend(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
                              "?publish_timeout=1")
    try:
        with pytest.raises(ivy.PublishError):
            Relay(source, down, [q], confirm_timeout=5).move(q)
    finally:
        down.close()
    assert source.size(q) == 3  # rolled back: nothing lost
    assert Relay(source, target, [q]).move(q) == 3
    assert bodies_of(target, q, 3) == [b"a", b"b", b"c"]


def test_two_relays_share_the_rows_without_duplicates(source: PostgresQueueBackend,
                                                      postgres_url: str,
                                                      target: QueueBackend) -> None:
    q = qname()
    bodies = [json.dumps({"n": i}).encode() for i in range(600)]
    source.publish_many(q, bodies)
    other = make_queue_backend(postgres_url)
    assert isinstance(other, PostgresQueueBackend)
    relays = [Running(Relay(source, target, [q], batch=50)),
              Running(Relay(other, target, [q], batch=50))]
    try:
        wait_for(lambda: source.size(q) == 0, timeout=30, message="every row moved")
        assert sum(r.relay.moved for r in relays) == 600
        assert all(r.relay.moved > 0 for r in relays)
    finally:
        for r in relays:
            r.close()
        other.close()
    got = bodies_of(target, q, 600)
    assert sorted(got) == sorted(bodies)


def relay_process(postgres_url: str, target_url: str, q: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "ivy", "relay", "--from", postgres_url, "--to", target_url,
         "--queue", q, "--batch", "50", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_relay_killed_mid_run_loses_nothing(source: PostgresQueueBackend, postgres_url: str,
                                              tmp_path: Path) -> None:
    # Given 3,000 messages and `ivy relay` moving them to SQLite
    q = qname()
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    bodies = [json.dumps({"n": i}).encode() for i in range(3000)]
    source.publish_many(q, bodies)
    target = make_queue_backend(target_url)
    try:
        first = relay_process(postgres_url, target_url, q)
        # When it is SIGKILLed once some have moved
        wait_for(lambda: target.size(q) >= 200, timeout=30, message="a first part moved")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert source.size(q) > 0  # it did not finish
        # and another relay runs (SIGTERM ends it cleanly)
        second = relay_process(postgres_url, target_url, q)
        wait_for(lambda: source.size(q) == 0, timeout=60, message="the rest moved")
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=20)
        assert second.returncode == 0, err
        assert "stopped after moving" in out
        # Then every message reached the target (a batch in flight may come twice)
        got: list[Any] = bodies_of(target, q, target.size(q))
        assert set(got) == set(bodies)
    finally:
        target.close()


def test_the_relay_command_refuses_a_source_that_is_not_postgresql(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ivy", "relay", "--from", f"sqlite:///{tmp_path / 'a.db'}",
         "--to", f"sqlite:///{tmp_path / 'b.db'}"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "reads a PostgreSQL queue" in done.stderr
