"""Redis Streams as the queue (``redis://`` as a queue URL), for real: the contract suite, the
URL and its options, priorities, what the stream holds after acks, poison messages that
kill their worker again and again, and a SIGKILLed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import SUPPORT_DIR, wait_for
from contract import QueueBackendContract, qname, take
from workers import killed_worker_task_completes_once, start_worker, stop_worker
from workers import producer_app as producer

import ivy
from ivy.config import make_queue_backend
from ivy.queues.base import QueueBackend

pytest.importorskip("redis")


def streams(url: str, **options: object) -> QueueBackend:
    from ivy.queues.redis_streams import RedisStreamsQueueBackend

    backend = make_queue_backend({"type": "redis", "url": url, **options})
    assert isinstance(backend, RedisStreamsQueueBackend)
    return backend


def cleanup(backend: QueueBackend) -> None:
    from ivy.queues.redis_streams import RedisStreamsQueueBackend

    assert isinstance(backend, RedisStreamsQueueBackend)
    backend.delete_queues(backend.queues())
    backend.close()


class TestRedisStreamsQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[QueueBackend]:
        b = streams(redis_url)
        yield b
        cleanup(b)


def test_queue_url_selects_streams_and_notifier_url_the_notifier(redis_url: str) -> None:
    from ivy.notifiers.redis import RedisNotifier
    from ivy.queues.redis_streams import RedisStreamsQueueBackend

    backend = make_queue_backend(redis_url + "?max_deliveries=3")
    assert isinstance(backend, RedisStreamsQueueBackend) and backend.max_deliveries == 3
    backend.close()
    notifier = ivy.config.make_notifier(redis_url)
    assert isinstance(notifier, RedisNotifier)
    notifier.close()
    with pytest.raises(ivy.ConfigurationError, match=r"max_deliveries='many'.*whole number"):
        make_queue_backend(redis_url + "?max_deliveries=many")
    with pytest.raises(ivy.ConfigurationError, match=r"max_deliveries=0.*whole number >= 1"):
        make_queue_backend({"type": "redis", "url": redis_url, "max_deliveries": 0})


def test_priorities_hold_through_prefetch_retry_delay_and_requeue(redis_url: str) -> None:
    from ivy.queues.redis_streams import StreamsDelivery

    backend = streams(redis_url)
    q = qname()
    try:
        # Given messages of three priorities, FIFO within each
        for body, priority in ((b"p0-a", 0), (b"p3-a", 3), (b"p9", 9), (b"p0-b", 0),
                               (b"p3-b", 3)):
            backend.publish(q, body, priority=priority)
        consumer = backend.consume(q, prefetch=10)
        # Then one prefetch hands them out highest first
        assert take(consumer, 5) == [b"p9", b"p3-a", b"p3-b", b"p0-a", b"p0-b"]
        # and a retried message keeps its priority
        backend.publish(q, b"high", priority=5)
        d = consumer.get(5)
        assert d is not None and d.body == b"high"
        backend.publish(q, b"low")
        d.retry(0)
        assert take(consumer, 2) == [b"high", b"low"]
        # and so does a delayed one, and a dead letter requeued
        backend.publish(q, b"later", priority=7, delay=0.2)
        d = consumer.get(5)
        assert isinstance(d, StreamsDelivery) and d.body == b"later" and d.priority == "7"
        d.dead_letter("for the test")
        backend.publish(q, b"low again")
        assert backend.requeue_dead(q) == 1
        assert take(consumer, 2) == [b"later", b"low again"]
        # unless the rewrite gives another
        backend.publish(q, b"p1", priority=1)
        d = consumer.get(5)
        assert d is not None
        d.dead_letter("again")
        assert backend.requeue_dead(q, rewrite=lambda body: (b"now p2", 2)) == 1
        backend.publish(q, b"p1 again", priority=1)
        assert take(consumer, 2) == [b"now p2", b"p1 again"]
        assert backend.size(q) == 0
        consumer.close()
        with pytest.raises(ivy.ConfigurationError, match="priorities are whole numbers from 0"):
            backend.publish(q, b"x", priority=256)
    finally:
        cleanup(backend)


def test_acked_entries_leave_the_stream(redis_url: str) -> None:
    # Given 50 messages consumed and acknowledged
    from ivy.queues.redis_streams import Keys

    backend = streams(redis_url)
    q = qname()
    try:
        backend.publish_many(q, [b"m%d" % i for i in range(50)])
        consumer = backend.consume(q, prefetch=10)
        for _ in range(50):
            d = consumer.get(5)
            assert d is not None
            d.ack()
        consumer.close()
        # Then the stream, the leases and the group's pending list are empty (XACK + XDEL)
        client = backend.client  # type: ignore[attr-defined]
        keys = Keys(q)
        assert client.xlen(keys.stream) == 0
        assert client.zcard(keys.leases) == 0
        assert client.xpending(keys.stream, "ivy")["pending"] == 0
        # and the closed consumer left the group
        assert client.xinfo_consumers(keys.stream, "ivy") == []
    finally:
        cleanup(backend)


def test_message_whose_lease_runs_out_again_and_again_is_dead_lettered(redis_url: str) -> None:
    # Given a backend that allows 3 deliveries, and consumers that take a message and vanish
    backend = streams(redis_url, max_deliveries=3)
    q = qname()
    try:
        backend.publish(q, b"poison")
        counts = []
        for _ in range(3):
            d = backend.consume(q, reserve_time=0.2).get(10)
            assert d is not None and d.body == b"poison"
            counts.append(d.delivery_count)
        assert counts == [1, 2, 3]
        # When its lease runs out a third time
        other = backend.consume(q)
        d = other.get(5)
        # Then it is handed out marked exhausted, with the reason for the dead letter
        assert d is not None and d.delivery_count == 4
        assert d.exhausted is not None
        assert "delivery limit: delivered 3 times" in d.exhausted
        assert "max_deliveries is 3" in d.exhausted
        d.dead_letter(d.exhausted)
        [dead] = backend.dead_letters(q)
        assert dead.body == b"poison" and dead.reason == d.exhausted
        assert backend.size(q) == 0
        assert other.get(0.3) is None
        other.close()
    finally:
        cleanup(backend)


def test_a_blocking_get_does_not_hold_up_other_threads(redis_url: str) -> None:
    import threading
    import time

    backend = streams(redis_url)
    q = qname()
    try:
        consumer = backend.consume(q)
        blocked = threading.Thread(target=consumer.get, args=(3.0,))
        blocked.start()
        started = time.monotonic()
        backend.publish(qname(), b"other")  # another thread's command goes through meanwhile
        assert backend.size(q) == 0
        assert time.monotonic() - started < 1.0
        consumer.close()  # and close() interrupts the get within a blocking read's bound
        blocked.join(2.0)
        assert not blocked.is_alive()
    finally:
        cleanup(backend)


def test_a_send_that_redis_never_takes_fails_loudly() -> None:
    from servers import free_port

    backend = streams(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        [future] = backend.send_many("q", [b"x"])
        with pytest.raises(ivy.PublishError,
                           match="did not take a message for queue 'q': ConnectionError"):
            future.result(30)
    finally:
        backend.close()


def test_consumer_recreates_a_group_that_redis_lost(redis_url: str) -> None:
    # Given a consumer, and a Redis that lost the stream and its group (a restart without
    # persistence, a FLUSHDB)
    from ivy.queues.redis_streams import Keys

    backend = streams(redis_url)
    q = qname()
    try:
        consumer = backend.consume(q)
        assert consumer.get(0.1) is None
        backend.client.delete(Keys(q).stream)  # type: ignore[attr-defined]
        # When a message is published again
        backend.publish(q, b"after")
        # Then the consumer makes the group again and gets it
        d = consumer.get(5)
        assert d is not None and d.body == b"after"
        d.ack()
        assert backend.size(q) == 0
        consumer.close()
    finally:
        cleanup(backend)


@pytest.mark.slow
def test_killed_worker_task_completes_once(redis_url: str, tmp_path: Path) -> None:
    backend = streams(redis_url)
    backend.delete_queues(["proc"])
    notifier = f"sqlite:///{tmp_path / 'n.db'}"
    app = producer(redis_url, notifier)
    try:
        killed_worker_task_completes_once(
            app, lambda: start_worker(redis_url, notifier), tmp_path)
    finally:
        app.close()
        cleanup(backend)


@pytest.mark.slow
def test_task_that_kills_its_worker_every_time_ends_dead_lettered(redis_url: str,
                                                                  tmp_path: Path) -> None:
    # Given a task that SIGKILLs the worker process running it, and max_deliveries=2
    url = f"{redis_url}?max_deliveries=2"
    backend = streams(redis_url)
    backend.delete_queues(["proc"])
    notifier = f"sqlite:///{tmp_path / 'n.db'}"
    env = {**os.environ, "PYTHONPATH": str(SUPPORT_DIR)}
    script = ("import os, signal, ivy\n"
              "@ivy.register_task(name='proc.suicide', queue='proc')\n"
              "def suicide() -> None:\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    (tmp_path / "suicide_tasks.py").write_text(script)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(SUPPORT_DIR)])
    app = ivy.Ivy(url, notifier)
    app.register_task(lambda: None, name="proc.suicide", queue="proc")
    last: subprocess.Popen[bytes] | None = None
    try:
        call = app.delayed_call("proc.suicide")
        # When worker after worker (short leases) takes it and dies
        for _ in range(2):
            worker = subprocess.Popen(
                [sys.executable, "-m", "ivy", "worker", "suicide_tasks", "--queue", "proc",
                 "--queue-url", url, "--notifier-url", notifier, "--reserve-time", "0.5"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert worker.wait(60) == -signal.SIGKILL
        # Then the next worker does not run it: it is dead-lettered with the reason
        last = start_worker(url, notifier, "--reserve-time", "0.5", env=env)
        wait_for(lambda: backend.dead_letters("proc"), timeout=30, message="the dead letter")
        [dead] = backend.dead_letters("proc")
        assert "delivery limit: delivered 2 times" in dead.reason
        assert backend.size("proc") == 0
        assert last.poll() is None  # the worker lives
        # and the producer is told why
        with pytest.raises(ivy.RemoteTaskError, match="delivered 2 times") as exc:
            call.result(10)
        assert exc.value.type == "MessageRejected"
    finally:
        if last is not None:
            stop_worker(last)
        app.close()
        cleanup(backend)
