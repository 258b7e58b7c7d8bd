"""Unique sends: ``send_task(..., unique_key=, unique_for=)`` and ``register_task(...,
unique_for=)``, on memory, SQLite and RabbitMQ + Redis, and with worker processes on SQLite."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from common import wait_for
from servers import free_port

import ivy
from ivy.call import Call
from ivy.message import Message, new_id, now_ms
from ivy.producer import unique
from ivy.producer.unique import SEND_CLAIM_TTL, task_key
from ivy.timing import keys
from ivy.timing.keys import UNIQUE_PREFIX


@pytest.fixture
def urls(store_urls: tuple[str, str]) -> tuple[str, str]:
    """These features keep state in the notifier: every pairing but RabbitMQ alone, whose
    notifier refuses them (tests/notifiers/test_amqp_notifier.py)."""
    return store_urls


def register(app: ivy.Ivy) -> tuple[str, list[tuple[int, int]]]:
    queue = f"qu{uuid.uuid4().hex[:8]}"
    ran: list[tuple[int, int]] = []

    @app.register_task(name="u.add", queue=queue)
    def add(a: int, b: int) -> int:
        ran.append((a, b))
        return a + b

    @app.register_task(name="u.once", queue=queue, unique_for=60)
    def once(a: int, b: int = 0) -> int:
        ran.append((a, b))
        return a - b

    return queue, ran


def held(app: ivy.Ivy, key: str) -> str | None:
    notifier = app.backends.results.notifier
    assert notifier is not None
    value = notifier.get_keys([UNIQUE_PREFIX + key])[0]
    return None if value is None else keys.holder(value)


def test_a_second_send_returns_the_first_call(app: ivy.Ivy) -> None:
    # Given a call sent with a unique key while no worker runs
    queue, ran = register(app)
    key = f"report:{uuid.uuid4().hex}"
    first = app.send_task("u.add", [1, 2], unique_key=key, unique_for=60)
    # When the same key is sent again (other arguments even)
    second = app.send_task("u.add", [5, 5], unique_key=key, unique_for=60)
    # Then nothing more is sent: the first call comes back
    assert second is first
    app.listen(queue=queue, block=False)
    assert first.result(20) == 3
    # (its ack follows its stored result, which a notifier may write in the background)
    wait_for(lambda: app.queue_backend.size(queue) == 0, message="the message acked")
    assert ran == [(1, 2)]
    # And within unique_for, after the result, it is still the first call
    assert app.send_task("u.add", [1, 2], unique_key=key, unique_for=60) is first
    assert held(app, key) == first.id


def test_the_key_is_held_while_pending_then_for_unique_for(app: ivy.Ivy) -> None:
    queue, ran = register(app)
    key = f"k:{uuid.uuid4().hex}"
    # Given a key held only while the call is pending (unique_for=0)
    first = app.send_task("u.add", [1, 1], unique_key=key)
    assert app.send_task("u.add", [1, 1], unique_key=key) is first
    app.listen(queue=queue, block=False)
    assert first.result(20) == 2
    # Then the worker lets it go once the outcome is recorded, and the next send is new
    wait_for(lambda: held(app, key) is None, message="the key to be released")
    second = app.send_task("u.add", [2, 2], unique_key=key, unique_for=0.3)
    assert second.id != first.id and second.result(20) == 4
    # And a key with unique_for outlives the call for that long, then goes
    assert held(app, key) == second.id
    wait_for(lambda: held(app, key) is None, timeout=10, message="unique_for to pass")
    assert ran == [(1, 1), (2, 2)]


def test_a_confirm_seen_after_the_outcome_does_not_keep_the_key(app: ivy.Ivy) -> None:
    # Given a unique call whose worker recorded its outcome and released its key (0.3 s of
    # unique_for left) before its producer saw the send's confirm: a fast worker does that
    notifier = app.producer.results().notifier
    assert notifier is not None
    key = f"late:{uuid.uuid4().hex}"
    call: Call[int] = Call(new_id(), "u.add", "q")
    assert notifier.claim_key(UNIQUE_PREFIX + key, call.id, SEND_CLAIM_TTL) is None
    message = Message(call.id, "u.add", [1, 1], extra={
        "unique_key": key, "unique_until": now_ms() + 300})
    keys.release(notifier, message)
    # When the producer keeps the key on the confirm, later
    unique._keep(notifier, key, call, 3600)
    # Then the worker's time stands: the key goes after unique_for
    assert held(app, key) == call.id
    wait_for(lambda: held(app, key) is None, timeout=10, message="unique_for to pass")


def test_a_task_s_unique_for_keys_on_name_and_arguments(app: ivy.Ivy) -> None:
    queue, ran = register(app)
    n = uuid.uuid4().int % 10**9  # keys outlive a test on a shared Redis: fresh arguments
    a = app.delayed_call("u.once", n, 1)
    assert app.delayed_call("u.once", n, 1) is a
    assert app.send_task("u.once", [n], {"b": 1}).id != a.id  # other arguments, as sent
    c = app.delayed_call("u.once", 1, n)
    assert c is not a
    app.listen(queue=queue, block=False)
    assert (a.result(20), c.result(20)) == (n - 1, 1 - n)
    wait_for(lambda: len(ran) == 3, message="three runs, one per distinct call")
    assert task_key("u.once", [3, 1], {}) != task_key("u.once", [1, 3], {})
    assert task_key("n", [], {"x": 1, "y": 2}) == task_key("n", [], {"y": 2, "x": 1})


def test_another_producer_gets_a_call_that_follows_the_first(
        app: ivy.Ivy, urls: tuple[str, str]) -> None:
    queue, ran = register(app)
    key = f"k:{uuid.uuid4().hex}"
    first = app.send_task("u.add", [20, 22], unique_key=key, unique_for=60)
    with ivy.Ivy(*urls) as other:
        other.register_task(name="u.add", queue=queue)(lambda a, b: a + b)
        follower = other.send_task("u.add", [20, 22], unique_key=key, unique_for=60)
        assert follower.id == first.id and follower is not first
        app.listen(queue=queue, block=False)
        assert follower.result(20) == 42 and first.result(20) == 42
    assert ran == [(20, 22)]


def test_bad_unique_options_are_refused(app: ivy.Ivy) -> None:
    register(app)
    with pytest.raises(ValueError, match="unique_key 5"):
        app.send_task("u.add", [1, 2], unique_key=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique_for -1"):
        app.send_task("u.add", [1, 2], unique_key="k", unique_for=-1)
    with pytest.raises(ivy.ConfigurationError, match="unique_for 'x'"):
        app.register_task(name="u.bad", unique_for="x")(lambda: None)  # type: ignore[arg-type]


@pytest.mark.slow
def test_concurrent_producers_and_worker_processes_on_sqlite(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    """Two producers send the same key from 4 threads each while two worker processes run:
    one message is sent and the task runs once."""
    from timing_workers import producer, start
    from workers import stop_worker

    log = tmp_path / "stamps.log"
    apps = [producer(sqlite_url, sqlite_url) for _ in range(2)]
    workers = [start("worker", sqlite_url, sqlite_url) for _ in range(2)]
    ids: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(8)

    def send(app: ivy.Ivy) -> None:
        go.wait()
        call = app.send_task("timing.stamp", [str(log), 7], unique_key="stamp", unique_for=30)
        with lock:
            ids.append(call.id)

    try:
        threads = [threading.Thread(target=send, args=(a,)) for a in apps for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(ids) == 8 and len(set(ids)) == 1
        assert apps[1].send_task("timing.stamp", [str(log), 7], unique_key="stamp",
                                 unique_for=30).result(30) == 7
        assert len(log.read_text().splitlines()) == 1
    finally:
        for w in workers:
            stop_worker(w)
        for a in apps:
            a.close()


def test_a_cancelled_call_lets_its_key_go(app: ivy.Ivy) -> None:
    queue, ran = register(app)
    key = f"k:{uuid.uuid4().hex}"
    first = app.send_task("u.add", [1, 2], unique_key=key, unique_for=60)
    first.cancel()
    second = app.send_task("u.add", [3, 4], unique_key=key, unique_for=60)
    assert second is not first
    app.listen(queue=queue, block=False)
    assert second.result(20) == 7
    with pytest.raises(ivy.CallCancelled):
        first.result(1)
    assert ran == [(3, 4)]


def unique_app(queue_url: str, redis_url: str) -> tuple[ivy.Ivy, str]:
    app = ivy.Ivy(queue_url, redis_url)
    queue = f"qu{uuid.uuid4().hex[:8]}"
    app.register_task(lambda x: x, name="u.echo", queue=queue)
    return app, queue


def key_ttl(redis_url: str, key: str) -> float:
    """Seconds the unique key ``key`` has left in Redis (-1: none, -2: absent)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return float(client.pttl(UNIQUE_PREFIX + key)) / 1000  # type: ignore[arg-type]
    finally:
        client.close()


def test_a_send_that_is_never_confirmed_lets_its_key_go(redis_url: str) -> None:
    # Given a unique send to a broker that never confirms (issue 20, row 4)
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?publish_timeout=0.5"
    app, _ = unique_app(url, redis_url)
    key = f"never:{uuid.uuid4().hex}"
    try:
        first = app.send_task("u.echo", [1], unique_key=key, unique_for=3600)
        # When its send fails after send_task returned
        with pytest.raises(ivy.PublishError):
            first.result(20)
        # Then the key is free at once, and the next send sends anew
        wait_for(lambda: held(app, key) is None, timeout=10, message="the key released")
        second = app.send_task("u.echo", [1], unique_key=key, unique_for=3600)
        assert second is not first and second.id != first.id
        with pytest.raises(ivy.PublishError):
            second.result(20)
    finally:
        app.close(timeout=1)


def test_a_key_is_claimed_briefly_until_its_message_is_confirmed(
        redis_url: str, amqp_url: str) -> None:
    # Given a unique send to a broker that does not answer yet: its producer may die
    # before the confirm, so the key is held only briefly
    silent = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?publish_timeout=30"
    app, _ = unique_app(silent, redis_url)
    key = f"brief:{uuid.uuid4().hex}"
    try:
        app.send_task("u.echo", [1], unique_key=key, unique_for=3600)
        assert 0 < key_ttl(redis_url, key) <= SEND_CLAIM_TTL
    finally:
        app.close(timeout=0.5)
    # When a send is confirmed by a real broker
    app, _ = unique_app(amqp_url, redis_url)
    key = f"kept:{uuid.uuid4().hex}"
    try:
        call = app.send_task("u.echo", [1], unique_key=key, unique_for=3600)
        call.sent(10)
        # Then the key is kept for its whole time
        wait_for(lambda: key_ttl(redis_url, key) > SEND_CLAIM_TTL, timeout=10,
                 message="the key kept once confirmed")
    finally:
        app.close()
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        conn.channel().queue_delete(call.queue)
        conn.close()


def test_a_slow_unique_send_does_not_hold_up_other_keys(
        memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a unique send whose claim is stuck in the store (issue 20, row 19)
    app, _ = unique_app(memory_url, memory_url)
    notifier = app.producer.results().notifier
    assert notifier is not None
    stuck, go_on = threading.Event(), threading.Event()
    claim = notifier.claim_key

    def slow_claim(key: str, value: str, ttl: float) -> str | None:
        if key.endswith(":slow"):
            stuck.set()
            go_on.wait(30)
        return claim(key, value, ttl)

    monkeypatch.setattr(notifier, "claim_key", slow_claim)
    slow = threading.Thread(target=app.send_task, args=("u.echo", [1]),
                            kwargs={"unique_key": "k:slow", "unique_for": 60})
    slow.start()
    try:
        assert stuck.wait(10)
        # When another key is sent meanwhile
        done = threading.Event()
        other = threading.Thread(target=lambda: (
            app.send_task("u.echo", [2], unique_key="k:fast", unique_for=60), done.set()))
        other.start()
        # Then it goes through while the first one still waits
        assert done.wait(10), "a unique send of another key waited behind the stuck one"
        assert not go_on.is_set() and slow.is_alive()
    finally:
        go_on.set()
        slow.join(10)
        app.close()
