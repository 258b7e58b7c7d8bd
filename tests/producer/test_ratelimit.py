"""Rate limits: ``register_task(..., rate_limit="N/s|m|h")`` holds across all workers; a
message over the limit is deferred (no attempt counted, no retry spent)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

import ivy
from ivy.timing.ratelimit import parse_rate_limit


@pytest.fixture
def urls(store_urls: tuple[str, str]) -> tuple[str, str]:
    """These features keep state in the notifier: every pairing but RabbitMQ alone, whose
    notifier refuses them (tests/notifiers/test_amqp_notifier.py)."""
    return store_urls


def observed_rate(stamps: list[float]) -> float:
    """Calls per second between the first start and the last."""
    stamps = sorted(stamps)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_two_workers_share_one_limit(app: ivy.Ivy, urls: tuple[str, str]) -> None:
    # Given a task limited to 20/s and two workers of 4 threads each
    queue = f"qr{uuid.uuid4().hex[:8]}"
    stamps: list[float] = []
    lock = threading.Lock()

    @app.register_task(name="r.limited", queue=queue, rate_limit="20/s")
    def limited(i: int) -> int:
        with lock:
            stamps.append(time.monotonic())
        return i

    other = ivy.Ivy(*urls)
    other.registry.add(limited)
    try:
        app.listen(queue=queue, concurrency=4, block=False)
        other.listen(queue=queue, concurrency=4, block=False)
        # When 40 calls are sent at once
        calls = app.delayed_calls(limited, [(i,) for i in range(40)])
        assert [c.result(60) for c in calls] == list(range(40))
        # Then they ran at 20/s (within 10%), and no deferral counted as an attempt
        rate = observed_rate(stamps)
        print(f"observed {rate:.2f}/s for a limit of 20/s")
        assert rate == pytest.approx(20, rel=0.10)
        assert {c.attempt for c in calls} == {0}
        assert app.dead_letters(queue) == []
    finally:
        other.close()


@pytest.mark.parametrize(("text", "count", "period"), [
    ("10/s", 10, 1.0), ("100/m", 100, 60.0), (" 3 / h ", 3, 3600.0)])
def test_rates_are_read(text: str, count: int, period: float) -> None:
    limit = parse_rate_limit(text, "t")
    assert limit is not None and (limit.count, limit.period) == (count, period)


@pytest.mark.parametrize("text", ["10", "0/s", "10/d", "ten/s", 10, "1.5/s"])
def test_bad_rates_are_refused(text: object) -> None:
    app = ivy.Ivy("memory://bad-rates", "memory://bad-rates")
    with pytest.raises(ivy.ConfigurationError, match=r"rate_limit .* is not a rate: write"):
        app.register_task(name="r.bad", rate_limit=text)(lambda: None)  # type: ignore[arg-type]
    app.close()


def processes_hold_the_rate(queue_url: str, notifier_url: str, log: Path) -> None:
    """Three worker processes of 2 threads run timing.limited (10/s) 40 times."""
    from timing_workers import producer, start
    from workers import stop_worker

    app = producer(queue_url, notifier_url)
    workers = [start("worker", queue_url, notifier_url, "--concurrency", "2",
                     "--queue", "timing") for _ in range(3)]
    try:
        calls = app.delayed_calls("timing.limited", [(str(log), i) for i in range(40)])
        assert sorted(c.result(60) for c in calls) == list(range(40))
        assert {c.attempt for c in calls} == {0}
    finally:
        for w in workers:
            stop_worker(w)
        app.close()
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 40
    rate = observed_rate([float(t) for _, t, _ in lines])
    print(f"observed {rate:.2f}/s for a limit of 10/s")
    assert rate == pytest.approx(10, rel=0.10), f"observed {rate:.2f}/s"
    assert len({pid for _, _, pid in lines}) >= 2, "one process ran everything"


@pytest.mark.slow
def test_three_worker_processes_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    processes_hold_the_rate(sqlite_url, sqlite_url, tmp_path / "stamps.log")


@pytest.mark.slow
def test_three_worker_processes_on_rabbitmq_and_redis(amqp_url: str, redis_url: str,
                                                      tmp_path: Path) -> None:
    import redis

    redis.Redis.from_url(redis_url).delete("ivy:rate:timing.limited")
    from ivy.queues.amqp import AMQPQueueBackend

    backend = AMQPQueueBackend(amqp_url)
    backend.delete_queues(["timing", "timing.dead"])
    backend.close()
    processes_hold_the_rate(amqp_url, redis_url, tmp_path / "stamps.log")


def test_a_backlog_is_deferred_once_per_message(app: ivy.Ivy) -> None:
    # Given a task limited to 20/s, and a store that counts the rate steps asked of it
    # (issue 20, row 18)
    queue = f"qr{uuid.uuid4().hex[:8]}"
    asked = [0]
    notifiers = {id(n): n for n in (app.producer.results().notifier, app.backends.producer_notifier)
                 if n is not None}
    for notifier in notifiers.values():
        for method in ("take_rate_slot", "reserve_rate_slot"):
            real = getattr(notifier, method)

            def counted(*args: object, _real: object = real) -> float:
                asked[0] += 1
                return _real(*args)  # type: ignore[operator,no-any-return]

            setattr(notifier, method, counted)

    @app.register_task(name="r.backlog", queue=queue, rate_limit="20/s")
    def backlog(i: int) -> int:
        return i

    # When a backlog of 30 calls meets one worker of 4 threads
    calls = app.delayed_calls(backlog, [(i,) for i in range(30)])
    app.listen(queue=queue, concurrency=4, block=False)
    assert [c.result(60) for c in calls] == list(range(30))
    # Then each call was deferred at most once to a slot of its own: about two rate steps
    # per call (one to reserve, one to use the slot), not one per call per interval
    assert asked[0] <= 2 * 30 + 4, asked[0]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis", "postgres"])
def test_a_reserved_slot_is_held_until_its_time(kind: str, sqlite_url: str,
                                                request: pytest.FixtureRequest) -> None:
    from common import wait_for

    from ivy.config import make_notifier

    url = {"memory": f"memory://rate-{uuid.uuid4().hex[:8]}", "sqlite": sqlite_url}.get(
        kind) or request.getfixturevalue(f"{kind}_url")
    notifier = make_notifier(url)
    key = f"ivy:rate:test-{uuid.uuid4().hex}"
    try:
        # Given slots 0.5 s apart: four callers reserve one each, in turn
        waits = [notifier.reserve_rate_slot(key, 0.5, 1, f"c{i}") for i in range(4)]
        assert waits[0] == 0.0
        assert waits[1:] == [pytest.approx(t, abs=0.2) for t in (0.5, 1.0, 1.5)]
        # When one of them asks again before its time, it gets its own slot's time back, and
        # takes no other: the next newcomer's slot is still the fifth
        assert 0 < notifier.reserve_rate_slot(key, 0.5, 1, "c2") <= waits[2]
        assert notifier.reserve_rate_slot(key, 0.5, 1, "new") == pytest.approx(2.0, abs=0.2)
        # Then at its time it may run, once: the reservation is used up
        wait_for(lambda: notifier.reserve_rate_slot(key, 0.5, 1, "c1") == 0.0, timeout=5,
                 message="the reserved slot's time")
        assert notifier.reserve_rate_slot(key, 0.5, 1, "c1") > 1.0  # a new slot, later
    finally:
        notifier.close()
