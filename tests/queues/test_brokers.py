"""RabbitMQ (queue) and Redis (notifier), for real: the contract suites, and what a production
pairing must survive: a SIGKILLed worker, a Redis restart, connections closed by the broker,
raw messages from other AMQP clients."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import wait_for
from contract import NotifierContract, QueueBackendContract, qname, take
from servers import PrivateRedis, free_port
from workers import killed_worker_task_completes_once, start_worker, stop_worker
from workers import producer_app as producer

import ivy
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend

pika = pytest.importorskip("pika")


class TestAMQPQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, amqp_url: str) -> Iterator[QueueBackend]:
        from ivy.queues.amqp import AMQPQueueBackend

        b = AMQPQueueBackend(amqp_url, max_priority=10)  # the contract checks priorities
        yield b
        b.delete_queues([n for n in b._declarer.seen])
        b.close()

    def test_unacked_message_comes_back_after_reservation(self, backend: QueueBackend) -> None:
        # AMQP has no reservation timer: an unacked message comes back when its consumer's
        # connection is lost (the worker died).
        from ivy.queues.amqp import AMQPConsumer

        q = qname()
        backend.publish(q, b"job")
        lost = backend.consume(q)
        first = lost.get(5)
        assert first is not None and first.delivery_count == 1
        assert isinstance(lost, AMQPConsumer)
        lost.shutdown()  # the connection drops without an ack
        other = backend.consume(q)
        again = other.get(10)
        assert again is not None and again.body == b"job"
        assert again.delivery_count == 2  # the broker marks it redelivered
        first.ack()  # a late ack from the dead connection does nothing
        again.ack()
        other.close()
        wait_for(lambda: backend.size(q) == 0, message="the ack")

    def test_bodies_larger_than_the_socket_buffer_arrive_whole(
            self, backend: QueueBackend) -> None:
        # frames leave with an eager send(); what the socket does not take is left to pika's
        # buffering, which must keep the order of everything sent after it
        q = qname()
        bodies = [bytes([i]) * (6 << 20) if i % 2 == 0 else b"small-%d" % i for i in range(6)]
        backend.publish_many(q, bodies)
        consumer = backend.consume(q, prefetch=10)
        got = take(consumer, len(bodies), timeout=20)
        consumer.close()
        assert got == bodies


class TestAMQPQueueOnPikasOwnPaths(TestAMQPQueue):
    """The same suite with a pika outside the versions ivy's shortcuts were tested with."""

    @pytest.fixture
    def backend(self, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[QueueBackend]:
        from ivy._amqp import _pika_patches
        from ivy.queues.amqp import AMQPQueueBackend

        monkeypatch.setattr(_pika_patches, "PIKA_VERSION", (1, 9, 0))
        b = AMQPQueueBackend(amqp_url, max_priority=10)
        yield b
        assert not b._link().shortcuts
        b.delete_queues([n for n in b._declarer.seen])
        b.close()


class TestAMQPQueueThroughAnExchange(TestAMQPQueue):
    """The same suite with the queue URL naming an exchange: publishes go through it."""

    @pytest.fixture
    def backend(self, amqp_url: str) -> Iterator[QueueBackend]:
        from ivy.config import make_queue_backend
        from ivy.queues.amqp import AMQPQueueBackend

        name = f"ivy-test-{uuid.uuid4().hex[:8]}"
        b = make_queue_backend({"type": "amqp", "url": amqp_url, "max_priority": 10,
                                "exchange": name, "exchange_type": "topic"})
        assert isinstance(b, AMQPQueueBackend) and b.exchange == name
        yield b
        b.delete_queues([n for n in b._declarer.seen])
        b.close()
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        conn.channel().exchange_delete(name)
        conn.close()


class TestAMQPQuorumQueue(TestAMQPQueue):
    """The same suite on quorum queues (``queue_type=quorum``, given in the dict form): every
    queue ivy declares is a quorum queue, and priorities are kept but not ordered."""

    @pytest.fixture
    def backend(self, amqp_url: str) -> Iterator[QueueBackend]:
        from ivy.config import make_queue_backend
        from ivy.queues.amqp import AMQPQueueBackend

        b = make_queue_backend({"type": "amqp", "url": amqp_url, "queue_type": "quorum"})
        assert isinstance(b, AMQPQueueBackend) and not b.supports_priority
        yield b
        b.delete_queues([n for n in b._declarer.seen])
        b.close()


def test_amqp_ops_run_in_the_calling_thread_when_the_loop_is_idle(amqp_url: str) -> None:
    import threading

    from ivy.queues.amqp import AMQPQueueBackend

    backend = AMQPQueueBackend(amqp_url)
    q = qname()
    try:
        backend.publish(q, b"first")
        link = backend._link()
        ran_in: list[int] = []
        wait_for(lambda: link._io_lock.acquire(timeout=0.01) and not link._io_lock.release(),
                 message="an idle I/O loop")
        link.call(lambda ch: ran_in.append(threading.get_ident()))
        assert ran_in == [threading.get_ident()]
        # while the loop is busy (its lock held), the op goes to the I/O thread instead
        with link._io_lock:
            link.call(lambda ch: ran_in.append(threading.get_ident()))
            assert len(ran_in) == 1
        wait_for(lambda: len(ran_in) == 2, message="the queued op")
        assert ran_in[1] == link._thread.ident

        # many threads publishing at once, each either on its own or through the loop
        def publish(k: int) -> None:
            for i in range(200):
                backend.publish(q, b"%d-%d" % (k, i))

        threads = [threading.Thread(target=publish, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        consumer = backend.consume(q, prefetch=100)
        got = set(take(consumer, 1601, timeout=10))
        consumer.close()
        assert got == {b"first"} | {b"%d-%d" % (k, i) for k in range(8) for i in range(200)}
    finally:
        backend.delete_queues([q])
        backend.close()


def test_amqp_batch_frames_are_joined_into_one_write(amqp_url: str) -> None:
    from ivy.queues.amqp import AMQPQueueBackend

    backend = AMQPQueueBackend(amqp_url)
    q = qname()
    try:
        backend.publish(q, b"first")  # connection and queue declared
        conn = backend._link()._conn
        assert conn is not None
        transport = conn._transport
        writes: list[int] = []
        write = transport.write
        transport.write = lambda data: (writes.append(len(data)), write(data))[1]
        backend.publish_many(q, [b"m%d" % i for i in range(50)])
        # 50 publishes are 150 frames; queued together they leave in a write or a few
        assert 1 <= len(writes) <= 5, writes
        assert backend.size(q) == 51
    finally:
        backend.delete_queues([q])
        backend.close()


class TestRedisNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, redis_url: str) -> Iterator[Notifier]:
        from ivy.notifiers.redis import RedisNotifier

        n = RedisNotifier(redis_url, result_ttl=60)
        yield n
        n.close()

    def test_stored_result_has_a_ttl(self, notifier: Notifier) -> None:
        from ivy.notifiers.redis import KEY_PREFIX, RedisNotifier

        assert isinstance(notifier, RedisNotifier)
        call_id = uuid.uuid4().hex
        notifier.publish("ivy:notify:ttl", call_id, b"x", final=True)
        assert 0 < notifier.client.ttl(KEY_PREFIX + call_id) <= 60

    def test_subscription_reads_past_its_health_check_pongs(self, notifier: Notifier) -> None:
        from ivy.notifiers.redis import RedisSubscription

        channel = f"ivy:notify:{uuid.uuid4().hex}"
        sub = notifier.subscribe(channel, lambda: [])
        assert isinstance(sub, RedisSubscription)
        try:
            assert sub.get(1) == []  # the subscription's confirmation, nothing stored
            sub._pubsub.connection.next_health_check = 0  # a PING is due now
            assert sub.get(0.3) == []  # its pong is read and passed over
            notifier.publish(channel, uuid.uuid4().hex, b"after", final=True)
            assert sub.get(2) == [b"after"]
        finally:
            sub.close()

    def test_store_survives_a_flushed_script_cache_and_a_killed_connection(
            self, notifier: Notifier, tmp_path: Path) -> None:
        from servers import PrivateRedis

        from ivy.notifiers.redis import KEY_PREFIX, RedisNotifier

        assert isinstance(notifier, RedisNotifier)
        # on a redis-server of its own: flushing scripts and killing every client connection
        # of the shared one would break the tests running beside this one
        server = PrivateRedis(tmp_path / "redis")
        server.start()
        own = RedisNotifier(server.url, result_ttl=60)
        try:
            first, second, third = (uuid.uuid4().hex for _ in range(3))
            own.publish("ivy:notify:x", first, b"1", final=True)
            own.client.script_flush()  # as after a restart without persistence
            own.publish("ivy:notify:x", second, b"2", final=True)
            # the server drops the worker's own connection (a restart, a proxy, a timeout)
            own.client.client_kill_filter(_type="normal", skipme=True)
            own.publish("ivy:notify:x", third, b"3", final=True)
            assert [own.client.get(KEY_PREFIX + i) for i in (first, second, third)] == [
                b"1", b"2", b"3"]
        finally:
            own.close()
            server.stop()


class TestRedisNotifierOnThePublicAPI(TestRedisNotifier):
    """The same suite with a redis-py outside the versions ivy's shortcuts were tested with."""

    @pytest.fixture
    def notifier(self, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Notifier]:
        from ivy.notifiers import _redis_direct
        from ivy.notifiers.redis import RedisNotifier

        monkeypatch.setattr(_redis_direct, "REDIS_VERSION", (99, 0, 0))
        n = RedisNotifier(redis_url, result_ttl=60)
        yield n
        n.close()

    def test_commands_and_reads_go_through_the_public_api(
            self, notifier: Notifier, monkeypatch: pytest.MonkeyPatch) -> None:
        from ivy.notifiers.redis import RedisNotifier, RedisSubscription

        assert isinstance(notifier, RedisNotifier)
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        sub = notifier.subscribe(channel, lambda: [])
        assert isinstance(sub, RedisSubscription)
        reads: list[float] = []
        get_message = sub._pubsub.get_message

        def spy(timeout: float) -> object:
            reads.append(timeout)
            return get_message(timeout=timeout)

        monkeypatch.setattr(sub._pubsub, "get_message", spy)
        try:
            notifier.publish(channel, uuid.uuid4().hex, b"final", final=True)
            notifier.publish(channel, uuid.uuid4().hex, b"running", final=False)
            got: list[bytes] = []
            wait_for(lambda: got.extend(sub.get(0.2)) or len(got) == 2, message="2 notifications")
            assert got == [b"final", b"running"]
            assert reads  # the subscription used PubSub.get_message
            assert notifier._commands.idle.empty()  # no connection of ivy's own was opened
        finally:
            sub.close()


@pytest.mark.slow
def test_sigkilled_worker_message_is_redelivered_and_callback_runs_once(
    amqp_url: str, redis_url: str, tmp_path: Path
) -> None:
    app = producer(amqp_url, redis_url)
    try:
        killed_worker_task_completes_once(app, lambda: start_worker(amqp_url, redis_url),
                                          tmp_path)
    finally:
        app.close()


@pytest.mark.slow
def test_redis_restart_with_200_calls_in_flight_loses_no_result(
    amqp_url: str, redis_url: str, tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH")
    server = PrivateRedis(tmp_path)
    server.start()
    app = producer(amqp_url, server.url)
    worker = start_worker(amqp_url, server.url, "--concurrency", "4")
    try:
        # Given 200 calls in flight, each task taking 20 ms
        calls = [app.delayed_call("proc.pause", 0.02, i) for i in range(200)]
        wait_for(lambda: sum(c.done() for c in calls) >= 20, timeout=30,
                 message="some results before the restart")
        # When Redis restarts in the middle
        server.stop()
        time.sleep(0.5)  # Redis stays down for a while: the fault under test, not a sync
        server.start()
        # Then every result still arrives, once
        results = [c.result(60) for c in calls]
        assert results == list(range(200))
    finally:
        stop_worker(worker)
        app.close()
        server.stop()


@pytest.mark.slow
def test_worker_reconnects_after_the_broker_closes_its_connection(
    amqp_url: str, redis_url: str
) -> None:
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.fail("rabbitmqctl is not on PATH")
    app = producer(amqp_url, redis_url)
    worker = start_worker(amqp_url, redis_url)
    try:
        assert app.delayed_call("proc.factorial", 5).result(20) == 120
        # When the broker closes every connection (producer's and worker's)
        out = subprocess.run([rabbitmqctl, "close_all_connections", "ivy test"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        # Then both reconnect and the next calls complete
        assert [app.delayed_call("proc.factorial", n).result(30) for n in (3, 4, 6)] == [
            6, 24, 720]
    finally:
        stop_worker(worker)
        app.close()


def test_raw_messages_from_another_amqp_client(amqp_url: str, redis_url: str) -> None:
    # Given a worker serving queue Q, and messages published to Q by plain pika
    app = producer(amqp_url, redis_url)
    runs: list[int] = []

    @app.register_task(name="factorial", queue="proc")  # the Node.js example's task name
    def factorial(n: int) -> int:
        runs.append(n)
        return n

    app.listen(queue="proc", block=False)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    # a client that follows PROTOCOL.md declares the queue as ivy does (publishing to a queue
    # that does not exist yet would drop the message): durable, plain, since no task of this
    # queue uses priorities
    channel.queue_declare("proc", durable=True)
    bad = {
        b"not json at all": "is not valid json",
        json.dumps({"ivy": 1, "id": "x", "name": "factorial", "args": "5"}).encode():
            "data.args must be array",
        json.dumps({"ivy": 1, "id": "y", "name": "nope.task", "args": []}).encode():
            "unknown task 'nope.task'",
    }
    for body in [*bad, b'{"name":"factorial","options":{},"args":[7]}']:
        channel.basic_publish("", "proc", body,
                              pika.BasicProperties(delivery_mode=2,
                                                   content_type="application/json"))
    # Then the legacy message runs and each bad one lands in proc.dead with its reason
    wait_for(lambda: runs == [7], message="the Node.js ivy 0.2 message to run")
    reasons: dict[bytes, str] = {}

    def read_dead() -> bool:
        while True:
            method, props, body = channel.basic_get("proc.dead", auto_ack=True)
            if method is None:
                return len(reasons) == len(bad)
            reasons[body] = (props.headers or {}).get("x-ivy-reason", "")

    wait_for(read_dead, message="three dead letters")
    for body, reason in bad.items():
        assert reason in reasons[body]
    conn.close()
    # and the worker keeps serving
    assert app.delayed_call(factorial, 3).result(10) == 3
    app.close()


def test_publish_to_an_unreachable_broker_fails_clearly() -> None:
    from ivy.queues.amqp import AMQPQueueBackend, PublishError

    backend = AMQPQueueBackend(f"amqp://guest:secret@127.0.0.1:{free_port()}/%2F",
                               publish_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(PublishError) as exc:
        backend.publish("q", b"{}")
    assert time.monotonic() - started < 5
    assert "no confirm" in str(exc.value) and "secret" not in str(exc.value)
    backend.close()



def test_priority_queue_only_where_tasks_use_priorities(amqp_url: str, redis_url: str) -> None:
    # Given tasks with priorities on queue "qa" and none on "qb"
    app = ivy.Ivy(amqp_url, redis_url)
    order: list[str] = []

    @app.register_task(name="t.low", queue="qa", priority=1)
    def low() -> None:
        order.append("low")

    @app.register_task(name="t.high", queue="qa", priority=9)
    def high() -> None:
        order.append("high")

    @app.register_task(name="t.plain", queue="qb")
    def plain() -> None: ...

    # When calls wait in the queues before a worker starts
    calls = [app.delayed_call(low) for _ in range(3)] + [app.delayed_call(high)]
    app.delayed_call(plain)
    app.flush(20)  # all of them are in the broker
    # Then "qa" is a priority queue and "qb" a plain one
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    channel.queue_declare("qa", durable=True, arguments={"x-max-priority": 10}, passive=False)
    channel.queue_declare("qb", durable=True)  # would fail (406) if declared otherwise
    conn.close()
    # and the high-priority call runs first
    app.listen(queue="qa", block=False)
    for call in calls:
        call.result(20)
    assert order[0] == "high"
    app.close()
