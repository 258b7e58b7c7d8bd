"""Quorum queues (``queue_type=quorum``) and node lists on the real RabbitMQ, beyond the contract
suite (which runs on quorum queues in test_brokers.py): what is declared, the delivery limit
that stops a poison message, priorities, a queue that exists with other arguments, retries
through quorum delay queues, and a node list whose first node does not answer."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from common import full_queue_policy, wait_for
from contract import qname, take
from servers import free_port
from workers import producer_app, start_worker, stop_worker

import ivy
from ivy._urls import join_hosts
from ivy.config import make_queue_backend
from ivy.errors import ConfigurationError

pika = pytest.importorskip("pika")

from ivy.queues.amqp import AMQPConsumer, AMQPDelivery, AMQPQueueBackend  # noqa: E402

URL = "amqp://guest:secret@127.0.0.1:5672/%2F"


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def quorum_backend(url: str, **options: object) -> AMQPQueueBackend:
    backend = make_queue_backend({"type": "amqp", "url": url, "queue_type": "quorum",
                                  **options})
    assert isinstance(backend, AMQPQueueBackend)
    return backend


@pytest.fixture
def quorum(amqp_url: str) -> Iterator[AMQPQueueBackend]:
    b = quorum_backend(amqp_url)
    yield b
    b.close()
    b.delete_queues(sorted(b._declarer.seen))


def test_options_from_the_url_and_the_dict_form() -> None:
    by_url = make_queue_backend(with_query(URL, "queue_type=quorum&delivery_limit=5"))
    assert isinstance(by_url, AMQPQueueBackend)
    assert by_url.queue_type == "quorum" and by_url._declarer.delivery_limit == 5
    assert not by_url.supports_priority
    plain = make_queue_backend(URL)
    assert isinstance(plain, AMQPQueueBackend)
    assert plain.queue_type == "classic" and plain.supports_priority
    # several nodes: in the URL, or as a list in the dict form; the password stays masked
    hosts = make_queue_backend("amqp://guest:secret@rabbit1:5672,rabbit2:5673,rabbit3/vh"
                               "?queue_type=quorum")
    assert isinstance(hosts, AMQPQueueBackend)
    assert [(p.host, p.port, p.virtual_host) for p in hosts.nodes] == [
        ("rabbit1", 5672, "vh"), ("rabbit2", 5673, "vh"), ("rabbit3", 5672, "vh")]
    assert hosts.url == "amqp://guest:***@rabbit1:5672,rabbit2:5673,rabbit3/vh?queue_type=quorum"
    listed = make_queue_backend({"type": "amqp", "url": URL, "nodes": ["a:5672", "b:5673"]})
    assert isinstance(listed, AMQPQueueBackend)
    assert [(p.host, p.port) for p in listed.nodes] == [("a", 5672), ("b", 5673)]
    assert all(p.credentials.password == "secret" for p in listed.nodes)


@pytest.mark.parametrize(("spec", "match"), [
    (with_query(URL, "queue_type=stream"), r"queue_type 'stream'.*classic, quorum"),
    (with_query(URL, "queue_type=quorum&max_priority=10"), r"quorum queues have no priority"),
    (with_query(URL, "queue_type=quorum&delivery_limit=-1"), r"delivery_limit=-1"),
    (with_query(URL, "delivery_limit=many"), r"whole numbers"),
    ({"type": "amqp", "url": URL, "nodes": "a:5672,b:5672"}, r"list of 'host:port'"),
    ({"type": "amqp", "url": URL, "nodes": ["a:5672", ""]}, r"host:port"),
    ("amqp://guest:secret@a:5672,,b:5672/%2F", r"malformed host list"),
])
def test_bad_options_are_refused_clearly(spec: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as error:
        make_queue_backend(spec)  # type: ignore[arg-type]
    assert "secret" not in str(error.value)


def refused_as_classic(amqp_url: str, name: str, arguments: dict[str, object]) -> str:
    """The broker's answer to declaring ``name`` with ``arguments`` but as a classic queue
    ("" if it agreed)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        conn.channel().queue_declare(name, durable=True,
                                     arguments={**arguments, "x-queue-type": "classic"})
    except pika.exceptions.ChannelClosedByBroker as exc:
        return f"{exc.reply_code} {exc.reply_text}"
    finally:
        conn.close()
    return ""


def test_every_queue_ivy_declares_is_a_quorum_queue(quorum: AMQPQueueBackend,
                                                    amqp_url: str) -> None:
    # Given tasks that use priorities on q (a classic backend would declare x-max-priority)
    quorum.use_hints(lambda queue: True, lambda queue: [])
    q = qname()
    # When a message goes to q, one through a delay queue, and one to the dead letters
    quorum.publish(q, b"now")
    quorum.publish(q, b"later", delay=0.05)
    consumer = quorum.consume(q)
    first = consumer.get(10)
    assert first is not None
    first.dead_letter("for the test")
    assert take(consumer, 1, timeout=10) == [b"later"]
    consumer.close()
    # Then q, its delay queue and q.dead are quorum queues: the same arguments but classic
    # differ from what exists in x-queue-type only
    delay = next(n for n in quorum._declarer.seen if ".delay." in n)
    for name in (q, delay, f"{q}.dead"):
        arguments = quorum._declarer.arguments(name)
        assert arguments is not None and "x-max-priority" not in arguments
        refused = refused_as_classic(amqp_url, name, arguments)
        assert "inequivalent arg 'x-queue-type'" in refused, (name, refused)
    assert [d.reason for d in quorum.dead_letters(q)] == ["for the test"]


def test_priorities_are_kept_but_not_ordered(quorum: AMQPQueueBackend) -> None:
    # Given a call of priority 0 and then one of priority 9 on a quorum queue
    q = qname()
    quorum.publish(q, b"low", priority=0)
    quorum.publish(q, b"high", priority=9)
    # Then they come in the order sent, and the priority travels with the message
    consumer = quorum.consume(q, prefetch=2)
    got = [consumer.get(10) for _ in range(2)]
    assert all(isinstance(d, AMQPDelivery) for d in got)
    assert [(d.body, d.priority) for d in got if isinstance(d, AMQPDelivery)] == [
        (b"low", 0), (b"high", 9)]
    for d in got:
        assert d is not None
        d.ack()
    consumer.close()


def test_a_poison_message_is_dead_lettered_at_the_delivery_limit(amqp_url: str) -> None:
    # Given a quorum queue that allows 2 redeliveries, and a message whose consumers all die
    # holding it (each connection drops without an ack, as when the task kills its worker)
    backend = quorum_backend(amqp_url, delivery_limit=2)
    q = qname()
    try:
        backend.publish(q, b"poison")
        counts = []
        for _ in range(3):
            consumer = backend.consume(q)
            assert isinstance(consumer, AMQPConsumer)
            d = consumer.get(10)
            assert d is not None and d.body == b"poison"
            counts.append(d.delivery_count)  # x-delivery-count feeds the attempt count
            consumer.shutdown()
        assert counts == [1, 2, 3]
        # Then RabbitMQ moves it to q.dead, and ivy's tools show why
        wait_for(lambda: backend.dead_letters(q), timeout=20, message="the dead letter")
        [dead] = backend.dead_letters(q)
        assert dead.body == b"poison" and "delivery limit" in dead.reason
        assert dead.time > 0
        assert backend.size(q) == 0
        # and it can be requeued like any other
        assert backend.requeue_dead(q) == 1
        consumer = backend.consume(q)
        again = consumer.get(10)
        assert again is not None and again.body == b"poison" and again.delivery_count == 1
        again.ack()
        consumer.close()
    finally:
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_an_existing_queue_with_other_arguments_gives_a_clear_error(amqp_url: str) -> None:
    # Given a classic queue q made by someone else
    q = qname()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_declare(q, durable=True)
    conn.close()
    app = ivy.Ivy(with_query(amqp_url, "queue_type=quorum"), f"memory://{uuid.uuid4().hex}")

    @app.register_task(name="quorum.echo", queue=q)
    def echo(x: int) -> int:
        return x

    other = qname()
    app.register_task(echo, name="quorum.other", queue=other)
    try:
        # When a worker listens on it: the error names the queue, the mismatch and the fix
        mismatch = rf"queue '{q}'.*inequivalent arg.*delete_queue"
        with pytest.raises(ivy.QueueMismatch, match=mismatch):
            app.listen(queue=q, block=False)
        # (also among several queues: the consumer already started for another one closes)
        with pytest.raises(ivy.QueueMismatch):
            app.listen(queue=[other, q], block=False)
        backend = app.queue_backend
        assert isinstance(backend, AMQPQueueBackend)
        started = [c for c in backend._consumers if c.queue == other]
        assert started and all(c._closed for c in started)
        # and a call sent to it fails with the same error (a PublishError), not a hang
        call = app.delayed_call("quorum.echo", 1)
        with pytest.raises(ivy.QueueMismatch, match="PRECONDITION_FAILED") as error:
            call.sent(15)
        assert isinstance(error.value, ivy.PublishError)
        assert isinstance(error.value, ivy.ConfigurationError)
        # while other queues keep working on the same connection
        app.listen(queue=other, block=False)
        assert app.delayed_call("quorum.other", 7).result(20) == 7
    finally:
        app.close()
        backend = AMQPQueueBackend(amqp_url)
        backend.delete_queues([q, f"{q}.dead", other, f"{other}.dead"])
        backend.close()


def test_retries_wait_in_quorum_delay_queues(amqp_url: str, redis_url: str) -> None:
    # Given a task that fails twice, with retries, on quorum queues and Redis for results
    app = ivy.Ivy(with_query(amqp_url, "queue_type=quorum"), redis_url,
                  retry_base_delay=0.05, retry_max_delay=0.1)
    q = qname()
    runs: list[int] = []

    @app.register_task(name="quorum.flaky", queue=q, retry=True, max_retries=3)
    def flaky() -> str:
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("not yet")
        return "done"

    backend = AMQPQueueBackend(amqp_url)
    try:
        app.listen(queue=q, block=False)
        # Then the third attempt's result arrives, and nothing was dead-lettered
        call = app.delayed_call(flaky)
        assert call.result(30) == "done"
        assert call.attempt == 2 and len(runs) == 3
        assert backend.dead_letters(q) == []
    finally:
        app.close()
        backend.delete_queues([q, f"{q}.dead"])  # its delay queues expire by themselves
        backend.close()


def test_a_node_list_goes_past_a_node_that_does_not_answer(amqp_url: str) -> None:
    # Given a node list whose first node does not answer, then the real one
    real = urlsplit(amqp_url)
    url = join_hosts(amqp_url, [f"127.0.0.1:{free_port()}",
                                f"{real.hostname}:{real.port or 5672}"])
    backend = quorum_backend(url)
    q = qname()
    try:
        # Then publishing, consuming and the management calls all reach the second
        backend.publish(q, b"via the second node")
        assert backend.size(q) == 1
        consumer = backend.consume(q)
        assert take(consumer, 1, timeout=10) == [b"via the second node"]
        consumer.close()
    finally:
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_a_worker_may_start_before_any_node_answers() -> None:
    # Given quorum queues on a node that does not answer (yet)
    backend = quorum_backend(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    try:
        # When a consumer starts, it does not fail: it declares the queue once connected
        consumer = backend.consume(qname())
        assert consumer.get(0.1) is None
        consumer.close()
    finally:
        backend.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_task_that_kills_its_worker_is_stopped_by_the_delivery_limit(
        amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    # Given a worker supervisor (it restarts a child that dies) on quorum queues that allow
    # one redelivery
    url = with_query(amqp_url, "queue_type=quorum&delivery_limit=1")
    app = producer_app(url, redis_url)
    supervisor = start_worker(url, redis_url, "--processes", "1",
                              "--max-tasks-per-child", "1000")  # a supervisor for one child
    log = tmp_path / "runs.log"
    try:
        # When a call's task ends its worker process every time it runs
        poison = app.delayed_call("proc.crash", str(log))
        # Then RabbitMQ dead-letters it after the second run, with the reason
        def dead() -> list[Any]:
            try:
                return app.queue_backend.dead_letters("proc")
            except pika.exceptions.AMQPError:  # a quorum queue whose process is still starting
                return []                      # ("noproc", seen on a loaded machine)

        wait_for(dead, timeout=90, message="the poison message in proc.dead")
        [dead] = app.queue_backend.dead_letters("proc")
        assert json.loads(dead.body)["id"] == poison.id
        assert "delivery limit" in dead.reason
        assert len(log.read_text().split()) == 2
        # and the restarted worker goes on with the next calls
        assert app.delayed_call("proc.factorial", 5).result(60) == 120
    finally:
        stop_worker(supervisor)
        app.close()


def test_a_queue_refused_on_every_node_is_retried_with_backoff(amqp_url: str) -> None:
    # Given a classic queue q, and a quorum consumer of q whose declaration was not checked up
    # front (no node answered when it started), with a node list (the same node twice)
    q = qname()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_declare(q, durable=True)
    conn.close()
    real = urlsplit(amqp_url)
    node = f"{real.hostname}:{real.port or 5672}"
    backend = quorum_backend(join_hosts(amqp_url, [node, node]))
    consumer = AMQPConsumer(backend, q, 1)
    try:
        # When the broker refuses the declaration on each connection
        started = time.monotonic()
        wait_for(lambda: consumer._link.generation >= 3, timeout=20,
                 message="three refused connections")
        # Then the link backs off (0.1 s, then 0.2 s) instead of spinning through the nodes,
        # and get() says why
        assert time.monotonic() - started >= 0.25
        with pytest.raises(ivy.QueueMismatch, match=q):
            consumer.get(0.1)
    finally:
        consumer.shutdown()
        backend.close()
        backend.delete_queues([q, f"{q}.dead"])



@pytest.fixture
def full_quorum_queue(amqp_url: str) -> Iterator[str]:
    """A quorum queue name under a policy that lets it hold 1 message and refuse (nack) the
    rest (see conftest.full_queue_policy)."""
    q = qname()
    with full_queue_policy(amqp_url, q):
        yield q


def test_a_nack_does_not_send_accepted_messages_twice(amqp_url: str,
                                                      full_quorum_queue: str) -> None:
    # Given a quorum queue that holds one message and refuses more, and another quorum queue
    full, other = full_quorum_queue, qname()
    backend = quorum_backend(amqp_url, publish_timeout=2)
    try:
        backend.publish(full, b"first")
        # the queue may take one more before its refusals start (RabbitMQ: "eventually")
        with contextlib.suppress(ivy.PublishError):
            backend.publish(full, b"second")
        backend.publish(other, b"warm-up")  # declared, with a leader
        for _ in range(2):
            # When publishes to the other queue are in flight (a quorum queue confirms once
            # its log has them) as the full queue's refusal comes back, at once
            futures = backend.send_many(other, [f"m{i}".encode() for i in range(100)])
            refused = backend.send_many(full, [b"refused"])
            futures += backend.send_many(other, [f"n{i}".encode() for i in range(100)])
            # Then the refused one fails once it was refused until publish_timeout, and
            # the accepted ones are each queued once (the publisher's reconnect after the
            # nack waits for their confirms instead of sending them again)
            for f in futures:
                f.result(30)
            with pytest.raises(ivy.PublishError, match="refused"):
                refused[0].result(30)
        assert backend.size(other) == 1 + 2 * 200
        # (and the publisher did move to new connections meanwhile)
        link = backend._publishing._link
        assert link is not None and link.generation >= 2
    finally:
        backend.close()
        backend.delete_queues([full, f"{full}.dead", other, f"{other}.dead"])


def test_a_quiesced_channel_whose_confirms_never_come_is_dropped_after_a_while(
        amqp_url: str) -> None:
    from ivy.queues import _amqp_publisher
    from ivy.queues._amqp_publisher import _Pending

    # Given a publisher that stopped publishing on its channel to drop it once the publishes
    # in flight are settled, and one of them whose confirm will never come
    backend = quorum_backend(amqp_url, publish_timeout=30)
    q = qname()
    try:
        backend.publish(q, b"warm-up")
        publisher = backend._publishing
        link = publisher.link()
        generation = link.generation
        with publisher._lock:
            publisher._by_tag[10**9] = _Pending("", q, b"lost", pika.BasicProperties(),
                                                time.monotonic() + 30, queue=q)
        assert not publisher._quiesce()  # one in flight: not dropped yet
        # When a message is sent meanwhile
        started = time.monotonic()
        [held] = backend.send_many(q, [b"held"])
        # Then it waits (held, not published on the quiet channel) until the channel is
        # dropped after QUIET_MAX, and goes out on the next connection
        held.result(_amqp_publisher.QUIET_MAX + 10)
        assert time.monotonic() - started >= _amqp_publisher.QUIET_MAX - 0.3
        assert link.generation > generation
        assert backend.size(q) == 2
    finally:
        backend.close()
        backend.delete_queues([q, f"{q}.dead"])
