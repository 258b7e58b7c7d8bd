"""Poison messages (issue 20, row 8): a message whose deliveries keep ending without an outcome
(its task kills its worker, or hangs it past its lease) is dead-lettered with the reason
"delivery limit" after ``max_deliveries`` of them, on every backend, and its producer's call
fails with that reason. Redis Streams and quorum queues have their own tests
(test_redis_streams.py, test_quorum.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from workers import producer_app, start_worker, stop_worker

import ivy
from ivy.config import make_queue_backend
from ivy.errors import ConfigurationError
from ivy.queues.base import DEFAULT_MAX_DELIVERIES


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture(params=["sqlite", "amqp"])
def poison_urls(request: pytest.FixtureRequest, sqlite_url: str) -> tuple[str, str]:
    """A queue URL that allows 2 lost deliveries, and its notifier: SQLite alone, or a
    classic RabbitMQ queue with Redis."""
    if request.param == "sqlite":
        return with_query(sqlite_url, "max_deliveries=2"), sqlite_url
    amqp = request.getfixturevalue("amqp_url")
    return with_query(amqp, "max_deliveries=2"), request.getfixturevalue("redis_url")


def test_a_task_that_kills_its_worker_is_dead_lettered_at_the_limit(
        poison_urls: tuple[str, str], tmp_path: Path) -> None:
    # Given a worker supervisor (it restarts a child that dies) whose leases are short
    queue_url, notifier_url = poison_urls
    app = producer_app(queue_url, notifier_url)
    supervisor = start_worker(queue_url, notifier_url, "--processes", "1",
                              "--reserve-time", "1", "--max-tasks-per-child", "1000")
    log = tmp_path / "runs.log"
    try:
        # When a call's task ends its worker process every time it runs
        poison = app.delayed_call("proc.crash", str(log))
        # Then it is dead-lettered after its second run, with the reason, and its call fails
        with pytest.raises(ivy.RemoteTaskError, match="delivery limit"):
            poison.result(90)
        wait_for(lambda: app.queue_backend.dead_letters("proc"), timeout=30,
                 message="the poison message in the dead letters")
        [dead] = app.queue_backend.dead_letters("proc")
        assert json.loads(dead.body)["id"] == poison.id
        assert dead.reason.startswith("delivery limit") and "max_deliveries is 2" in dead.reason
        assert len(log.read_text().split()) == 2
        # and the restarted worker goes on with the next calls
        assert app.delayed_call("proc.factorial", 5).result(60) == 120
    finally:
        stop_worker(supervisor)
        app.queue_backend.purge_dead("proc")
        app.close()


def test_a_message_whose_leases_ran_out_is_dead_lettered_before_it_runs(
        memory_url: str) -> None:
    # Given a message on the memory backend whose leases ran out twice without an outcome
    app = ivy.Ivy(with_query(memory_url, "max_deliveries=2"), memory_url)
    ran: list[int] = []
    queue = f"qp{uuid.uuid4().hex[:8]}"
    app.register_task(ran.append, name="p.record", queue=queue)
    call = app.delayed_call("p.record", 1)
    consumer = app.queue_backend.consume(queue, reserve_time=0.05)
    for count in (1, 2):  # taken, then never settled: its holder "died"; the second get
        taken = consumer.get(5)  # waits for the first lease to run out
        assert taken is not None and taken.delivery_count == count
    consumer.close()
    try:
        # When a worker takes it
        app.listen(queue=queue, block=False)
        # Then it dead-letters it instead of running it, and the call fails with the reason
        with pytest.raises(ivy.RemoteTaskError, match="delivery limit"):
            call.result(20)
        assert ran == []
        wait_for(lambda: app.queue_backend.dead_letters(queue), message="the dead letter")
    finally:
        app.close()


def test_retries_are_not_lost_deliveries(sqlite_url: str) -> None:
    # Given a task that fails 4 times and a limit of 2 lost deliveries
    app = ivy.Ivy(with_query(sqlite_url, "max_deliveries=2"), sqlite_url,
                  retry_base_delay=0.01, retry_max_delay=0.02)
    failures = [4]

    @app.register_task(name="p.flaky", queue="qp-retries", max_retries=5)
    def flaky() -> str:
        if failures[0]:
            failures[0] -= 1
            raise ValueError("not yet")
        return "done"

    try:
        app.listen(queue="qp-retries", block=False)
        # Then its retries do not count against the limit: the fifth run succeeds
        assert app.delayed_call(flaky).result(30) == "done"
        assert app.queue_backend.dead_letters("qp-retries") == []
    finally:
        app.close()


def test_an_unstarted_amqp_message_given_back_is_not_counted(amqp_url: str) -> None:
    # Given a classic queue consumer holding prefetched messages it never started
    backend = make_queue_backend(amqp_url)
    queue = f"qp{uuid.uuid4().hex[:8]}"
    try:
        backend.publish_many(queue, [b"one", b"two"])
        consumer = backend.consume(queue, prefetch=2)
        first = consumer.get(10)
        assert first is not None and first.delivery_count == 1
        first.release()  # put back as a copy, which this consumer prefetches again
        wait_for(lambda: len(consumer._buffer) == 2,  # type: ignore[attr-defined]
                 timeout=10, message="the released message prefetched again")
        # When it closes (a worker stopping): the unstarted ones go back
        consumer.close()
        again = backend.consume(queue, prefetch=2)
        got: list[Any] = []
        wait_for(lambda: got.append(again.get(0.5)) or len([d for d in got if d]) == 2,
                 timeout=20, message="both messages back")
        # Then neither counts as a lost delivery: not marked, count unchanged
        for d in (d for d in got if d is not None):
            assert not d.uncounted and d.delivery_count == 1
            d.ack()
        again.close()
    finally:
        backend.delete_queues([queue])
        backend.close()


def test_max_deliveries_is_checked_and_quorum_queues_keep_their_own(amqp_url: str,
                                                                     sqlite_url: str) -> None:
    assert make_queue_backend(sqlite_url).max_deliveries == DEFAULT_MAX_DELIVERIES
    assert make_queue_backend("memory://p?max_deliveries=3").max_deliveries == 3
    assert make_queue_backend(amqp_url).max_deliveries == DEFAULT_MAX_DELIVERIES
    assert make_queue_backend(with_query(amqp_url, "queue_type=quorum")).max_deliveries is None
    for bad in ("0", "-1", "many", "2.5"):
        with pytest.raises(ConfigurationError, match=f"max_deliveries={bad!r}.*whole number"):
            make_queue_backend(with_query(sqlite_url, f"max_deliveries={bad}"))


@pytest.fixture
def defers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays of the memory backend's defers (a defer puts a message back uncounted)."""
    from ivy.queues.memory import MemoryDelivery

    seen: list[float] = []
    real = MemoryDelivery._defer

    def counted(self: MemoryDelivery, delay: float) -> None:
        seen.append(delay)
        real(self, delay)

    monkeypatch.setattr(MemoryDelivery, "_defer", counted)
    return seen


def test_a_message_back_from_a_dead_worker_is_spread_once_then_runs(
        memory_url: str, monkeypatch: pytest.MonkeyPatch, defers: list[float]) -> None:
    from ivy.worker import processing

    # Given a message whose lease ran out once (its worker died while holding it)
    monkeypatch.setattr(processing, "SUSPECT_SPREAD", 0.05)
    app = ivy.Ivy(memory_url, memory_url)
    ran: list[int] = []
    queue = f"qp{uuid.uuid4().hex[:8]}"
    app.register_task(ran.append, name="p.suspect", queue=queue)
    call = app.delayed_call("p.suspect", 7)
    consumer = app.queue_backend.consume(queue, reserve_time=0.05)
    assert consumer.get(5) is not None  # taken, never settled
    consumer.close()
    try:
        # When a worker takes it
        app.listen(queue=queue, block=False)
        # Then it is deferred once, by a random part of SUSPECT_SPREAD (so that what a dead
        # worker held does not come back and die together), and then runs
        call.result(20)
        assert ran == [7]
        assert len(defers) == 1 and 0.0 <= defers[0] <= 0.05
    finally:
        app.close()


def test_a_message_returned_after_an_internal_error_is_not_spread(
        memory_url: str, monkeypatch: pytest.MonkeyPatch, defers: list[float]) -> None:
    from ivy.worker.gate import Gate

    # Given a worker whose gate raises on the first two deliveries of a call (a bug of ours)
    admit = Gate.admit
    raised: list[int] = []

    def buggy(self: Gate, delivery: Any, task: Any, message: Any) -> bool:
        if len(raised) < 2:
            raised.append(delivery.delivery_count)
            raise RuntimeError("a bug")
        return admit(self, delivery, task, message)

    monkeypatch.setattr(Gate, "admit", buggy)
    app = ivy.Ivy(memory_url, memory_url, retry_base_delay=0.001, retry_max_delay=0.002)
    try:
        ran: list[int] = []
        queue = f"qp{uuid.uuid4().hex[:8]}"
        app.register_task(ran.append, name="p.returned", queue=queue)
        app.listen(queue=queue, block=False)
        # When the call is sent: it is returned twice, then runs
        app.delayed_call("p.returned", 3).result(20)
        # Then its returns, which look like lost deliveries, were not spread as a dead
        # worker's would be: nothing was deferred
        assert raised == [1, 2] and ran == [3]
        assert defers == []
    finally:
        app.close()
