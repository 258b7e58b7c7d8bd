"""The AMQP backend on the real RabbitMQ, beyond the contract: pika's own I/O paths when the
installed pika is not one ivy's shortcuts were tested with, priorities kept across retries,
deferred deliveries that do not count as attempts, and an exchange with routes."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from common import wait_for
from contract import qname, take

pika = pytest.importorskip("pika")

from ivy._amqp import _pika_patches  # noqa: E402
from ivy.queues.amqp import AMQPQueueBackend, PublishError  # noqa: E402


@pytest.fixture
def backend(amqp_url: str) -> Iterator[AMQPQueueBackend]:
    b = AMQPQueueBackend(amqp_url)
    yield b
    b.close()
    b.delete_queues(sorted(b._declarer.seen))


def test_untested_pika_falls_back_to_its_own_io_paths(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Given a pika version outside the range ivy's private-API shortcuts were tested with
    monkeypatch.setattr(_pika_patches, "PIKA_VERSION", (1, 9, 0))
    monkeypatch.setattr(_pika_patches, "_fallback_logged", threading.Event())
    caplog.set_level(logging.INFO, logger="ivy.amqp")
    backend = AMQPQueueBackend(amqp_url)
    q = qname()
    try:
        # When it publishes (a body larger than the socket buffer included) and consumes
        bodies = [b"first", b"x" * (6 << 20), b"last"]
        backend.publish_many(q, bodies)
        consumer = backend.consume(q, prefetch=10)
        retried = consumer.get(10)
        assert retried is not None and retried.body == b"first"
        retried.retry(0.05)  # through a delay queue and back
        got = take(consumer, 3, timeout=20)
        consumer.close()
        # Then every message arrives, the retried one after the others
        assert got == [*bodies[1:], b"first"]
        # through pika's own paths: nothing patched, and an op of another thread runs on the
        # connection's I/O thread
        link = backend._link()
        conn = link._conn
        assert conn is not None and not link.shortcuts
        assert not hasattr(conn, "_ivy_cork")
        assert "write" not in vars(conn._transport)
        ran_in: list[int | None] = []
        link.call(lambda ch: ran_in.append(threading.get_ident()))
        wait_for(lambda: ran_in, message="the op")
        assert ran_in == [link._thread.ident]
        # and the fallback was logged once, for all the connections
        said = [r for r in caplog.records if "pika's own I/O paths" in r.getMessage()]
        assert len(said) == 1 and "1.9.0" in said[0].getMessage()
    finally:
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_tested_pika_uses_the_shortcuts(backend: AMQPQueueBackend) -> None:
    # the installed pika is inside the tested range (else the bound in pyproject is wrong)
    assert _pika_patches.enabled(), _pika_patches.PIKA_VERSION
    q = qname()
    backend.publish(q, b"x")
    link = backend._link()
    assert link.shortcuts and link._conn is not None and hasattr(link._conn, "_ivy_cork")


@pytest.fixture
def priorities(amqp_url: str) -> Iterator[AMQPQueueBackend]:
    """A backend whose queues are priority queues."""
    b = AMQPQueueBackend(amqp_url, max_priority=10)
    yield b
    b.close()
    b.delete_queues(sorted(b._declarer.seen))


def test_a_retried_message_keeps_its_priority(priorities: AMQPQueueBackend) -> None:
    from ivy.queues.amqp import AMQPDelivery

    # Given a message of priority 5 being worked on, and three of priority 1 waiting
    q = qname()
    priorities.publish(q, b"high", priority=5)
    consumer = priorities.consume(q, prefetch=1)
    high = consumer.get(10)
    assert high is not None and high.body == b"high"
    priorities.publish_many(q, [b"low"] * 3, priority=1)
    # When it is retried at once
    high.retry(0)
    # Then it comes back before the others (the retry is confirmed before the ack frees the
    # consumer's one prefetch slot, so the broker chooses among all four)
    again = consumer.get(10)
    assert again is not None and again.body == b"high"
    assert isinstance(again, AMQPDelivery) and again.priority == 5
    # and through a delay queue too
    again.retry(0.05)
    got: list[AMQPDelivery] = []
    for _ in range(4):
        d = consumer.get(10)
        assert isinstance(d, AMQPDelivery)
        got.append(d)
        d.ack()
    consumer.close()
    [later] = [d for d in got if d.body == b"high"]
    assert later.priority == 5 and later.delivery_count == 3


def test_a_deferred_message_is_not_counted_as_an_attempt(
        priorities: AMQPQueueBackend) -> None:
    from ivy.queues.amqp import AMQPDelivery

    q = qname()
    priorities.publish(q, b"job", priority=5)
    consumer = priorities.consume(q)
    counts: list[int] = []
    # When the message is deferred, retried, deferred again (at once and through a delay queue)
    for step in ("defer", "retry", "defer", "defer", "ack"):
        d = consumer.get(10)
        assert isinstance(d, AMQPDelivery) and d.body == b"job" and d.priority == 5
        counts.append(d.delivery_count)
        if step == "defer":
            d.defer(0.05 if len(counts) % 2 else 0)
        elif step == "retry":
            d.retry(0)
        else:
            d.ack()
    consumer.close()
    # Then only the retry counted
    assert counts == [1, 1, 2, 2, 2]


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def exchange(amqp_url: str) -> Iterator[str]:
    """A fresh exchange name, deleted after the test."""
    name = f"ivy-test-{uuid.uuid4().hex[:8]}"
    yield name
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().exchange_delete(name)
    conn.close()


def test_exchange_options_from_the_url_and_the_dict_form(amqp_url: str) -> None:
    from ivy.config import make_queue_backend
    from ivy.errors import ConfigurationError

    by_url = make_queue_backend(with_query(amqp_url, "exchange=ivy&exchange_type=topic"))
    by_dict = make_queue_backend({"type": "amqp", "url": amqp_url, "exchange": "ivy"})
    plain = make_queue_backend(amqp_url)
    assert isinstance(by_url, AMQPQueueBackend) and isinstance(by_dict, AMQPQueueBackend)
    assert isinstance(plain, AMQPQueueBackend)
    assert (by_url.exchange, by_url.exchange_type) == ("ivy", "topic")
    assert (by_dict.exchange, by_dict.exchange_type) == ("ivy", "direct")
    assert plain.exchange == ""
    with pytest.raises(ConfigurationError, match=r"exchange_type 'fanout'.*direct, topic"):
        make_queue_backend(with_query(amqp_url, "exchange=ivy&exchange_type=fanout"))


def test_a_route_published_to_the_exchange_reaches_the_consumer(
        amqp_url: str, exchange: str) -> None:
    # Given a backend whose queue URL names an exchange, and a consumer of q, whose tasks have
    # the route testpackage.route1 (the app's registry answers routes_hint, through use_hints)
    backend = AMQPQueueBackend(amqp_url, exchange=exchange)
    backend.use_hints(lambda queue: False, lambda queue: ["testpackage.route1"])
    q = qname()
    consumer = backend.consume(q)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    try:
        # When another AMQP client publishes to the exchange with the route as routing key
        # (mandatory: the broker returns it until the consumer has bound its queue)
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.confirm_delivery()

        def routed() -> bool:
            try:
                channel.basic_publish(
                    exchange, "testpackage.route1",
                    b'{"name":"testpackage.factorial","options":{},"args":[7]}',
                    pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                    mandatory=True)
            except pika.exceptions.UnroutableError:
                return False
            return True

        wait_for(routed, message="the consumer's binding of the route")
        # Then the ivy consumer of q receives it
        assert take(consumer, 1, timeout=10) == [
            b'{"name":"testpackage.factorial","options":{},"args":[7]}']
        # and q is bound with its own name too: the exchange's other keys are not
        channel.basic_publish(exchange, q, b"by name", mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish(exchange, "testpackage.route2", b"other", mandatory=True)
        assert take(consumer, 1, timeout=10) == [b"by name"]
    finally:
        conn.close()
        consumer.close()
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_publish_with_a_route_goes_through_the_exchange_and_retries_do_not(
        amqp_url: str, exchange: str) -> None:
    # Given a topic exchange, and another client's queue listening to orders.#
    backend = AMQPQueueBackend(amqp_url, exchange=exchange, exchange_type="topic")
    q, spy = qname(), qname()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    channel.exchange_declare(exchange, "topic", durable=True)
    channel.queue_declare(spy)
    channel.queue_bind(spy, exchange, routing_key="orders.#")
    try:
        # When ivy publishes to q with a route, and without one
        backend.publish(q, b"routed", route="orders.created")
        backend.publish(q, b"plain")
        # Then both reach q, and the routed one also the other client's queue
        consumer = backend.consume(q, prefetch=1)
        first = consumer.get(10)
        assert first is not None and first.body == b"routed"
        # and a retry goes straight to q, not through the exchange
        first.retry(0)
        assert take(consumer, 2, timeout=10) == [b"plain", b"routed"]
        consumer.close()
        spied = []
        while (got := channel.basic_get(spy, auto_ack=True))[0] is not None:
            spied.append(got[2])
        assert spied == [b"routed"]
    finally:
        channel.queue_delete(spy)
        conn.close()
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_without_an_exchange_the_route_is_ignored(backend: AMQPQueueBackend) -> None:
    q = qname()
    backend.publish(q, b"a", route="somewhere.else")
    backend.publish_many(q, [b"b"], route="somewhere.else")
    consumer = backend.consume(q)
    assert take(consumer, 2) == [b"a", b"b"]
    consumer.close()


def test_a_tasks_route_from_the_originals_options_binds_the_workers_queue(
        amqp_url: str, redis_url: str, exchange: str) -> None:
    import ivy

    # Given a task registered in the original's form, with a route, on a queue URL that names
    # an exchange
    url = with_query(amqp_url, f"exchange={exchange}")
    app = ivy.Ivy(url, redis_url)

    def factorial(number: int, callback: object) -> None:
        callback(None, 42)  # type: ignore[operator]

    app.register_task(factorial, None, {"name": "testpackage.factorial", "queue": "testpackage",
                                        "route": "testpackage.route1"})
    assert app.queue_routes("testpackage") == ["testpackage.route1"]
    try:
        worker = app.listen(queue="testpackage", block=False)
        # When ivy sends a call, it goes through the exchange with the route and completes
        assert app.delayed_call("testpackage.factorial", 5).result(20) == 42
        # and another client publishing to the exchange with the route reaches the worker
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, "testpackage.route1",
                              b'{"name":"testpackage.factorial","options":{},"args":[7]}',
                              pika.BasicProperties(delivery_mode=2), mandatory=True)
        conn.close()
        wait_for(lambda: worker.processed >= 2, timeout=20,
                 message="the worker to run the routed message")
        assert app.queue_backend.dead_letters("testpackage") == []
    finally:
        app.close()


def test_a_consumer_whose_queue_is_deleted_consumes_again(backend: AMQPQueueBackend) -> None:
    # Given a consumer on a queue that someone deletes (the broker cancels the consumer)
    q = qname()
    backend.publish(q, b"before")
    consumer = backend.consume(q)
    try:
        assert take(consumer, 1, timeout=10) == [b"before"]
        backend.delete_queues([q])
        # When messages are published to the queue again (the publisher declares it anew)
        backend._declarer.reset()
        backend.publish(q, b"after")
        # Then the consumer reconnects, declares the queue again and receives them
        assert take(consumer, 1, timeout=20) == [b"after"]
    finally:
        consumer.close()


def test_persistent_false_publishes_transient_messages(amqp_url: str) -> None:
    from ivy.config import make_queue_backend
    from ivy.errors import ConfigurationError

    # Given the default backend and one with ?persistent=false
    durable = make_queue_backend(amqp_url)
    transient = make_queue_backend(with_query(amqp_url, "persistent=false"))
    assert isinstance(durable, AMQPQueueBackend) and isinstance(transient, AMQPQueueBackend)
    q = qname()
    try:
        # When each publishes (and a retry is published again by the transient one)
        durable.publish(q, b"durable")
        transient.publish(q, b"transient")
        transient.publish(q, b"retry", delay=0.05)
        # Then the broker holds them with delivery_mode 2 and 1
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = conn.channel()
        modes = {}
        deadline = 50
        while len(modes) < 3 and deadline:
            method, props, body = channel.basic_get(q, auto_ack=True)
            if method is None:
                deadline -= 1
                conn.sleep(0.1)
                continue
            modes[body] = props.delivery_mode
        conn.close()
        assert modes == {b"durable": 2, b"transient": 1, b"retry": 1}
    finally:
        for b in (durable, transient):
            b.close()
        durable.delete_queues(sorted(durable._declarer.seen | transient._declarer.seen))
    # and a bad value, or transient messages on quorum queues, are refused clearly
    with pytest.raises(ConfigurationError, match=r"persistent 'sometimes'.*true or false"):
        make_queue_backend(with_query(amqp_url, "persistent=sometimes"))
    with pytest.raises(ConfigurationError, match=r"persistent=false with queue_type=quorum"):
        make_queue_backend(with_query(amqp_url, "persistent=false&queue_type=quorum"))


def test_a_delay_queue_in_use_does_not_expire_under_its_messages(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy._amqp import topology as _amqp_topology

    # Given delay queues that expire 1.5 s after their last declaration (60 s in ivy) and a
    # publisher that declares them again when its declaration is 0.3 s old (15 s in ivy)
    monkeypatch.setattr(_amqp_topology, "DELAY_GRACE_MS", 1500)
    monkeypatch.setattr(_amqp_topology, "DELAY_REFRESH", 0.3)
    backend = AMQPQueueBackend(amqp_url)
    q = qname()
    consumer = backend.consume(q, prefetch=10)
    try:
        # When delayed messages are published on one connection for longer than that
        sent = []
        started = time.monotonic()
        while time.monotonic() - started < 3.5:
            body = f"d{len(sent)}".encode()
            backend.publish(q, body, delay=0.05)
            sent.append(body)
            time.sleep(0.1)  # pacing the publishes over the expiry, not waiting for something
        # Then every one reaches the queue (RabbitMQ deletes an expired queue with its
        # messages, and drops what is published to it afterwards: publishes do not count as
        # use, so the declaration is renewed instead)
        assert sorted(take(consumer, len(sent), timeout=10)) == sorted(sent)
    finally:
        consumer.close()
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_a_publish_to_a_deleted_queue_is_declared_again_not_dropped(
        backend: AMQPQueueBackend, amqp_url: str) -> None:
    # Given a queue the publisher declared on its connection, then deleted by someone else
    q = qname()
    backend.publish(q, b"first")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_delete(q)
    # When the publisher sends to it again on the same connection
    backend.publish(q, b"second")  # returns once the broker confirmed it
    # Then the broker returned the message as unroutable instead of dropping it, and the
    # publisher declared the queue again and sent it there
    channel = conn.channel()
    method, _, body = channel.basic_get(q, auto_ack=True)
    assert method is not None and body == b"second"
    conn.close()


def test_a_message_no_queue_takes_fails_its_call_at_the_deadline(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a publisher that declared a queue, the queue deleted behind its back, and the
    # publisher kept from declaring it again (what a route that never reaches a queue is)
    backend = AMQPQueueBackend(amqp_url, publish_timeout=1.5)
    q = qname()
    try:
        backend.publish(q, b"first")
        monkeypatch.setattr(backend._declarer, "forget", lambda: None)
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        conn.channel().queue_delete(q)
        conn.close()
        # When a message is sent to it
        [future] = backend.send_many(q, [b"nowhere"])
        # Then it is sent again until publish_timeout, then fails loudly, saying why
        with pytest.raises(PublishError, match=r"returned the message for queue .* as "
                           r"unroutable \(312 NO_ROUTE\)"):
            future.result(10)
    finally:
        backend.close()
        backend.delete_queues([q])


def test_a_delay_queue_used_as_it_was_is_declared_anew_once_gone(
        backend: AMQPQueueBackend, amqp_url: str) -> None:
    # Given a delay queue that another client declared with other arguments (an older ivy,
    # say): ivy uses it as it is
    q = qname()
    delay_q = f"{q}.delay.50"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    channel.queue_declare(delay_q, durable=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    consumer = backend.consume(q, prefetch=10)
    try:
        backend.publish(q, b"one", delay=0.05)
        assert take(consumer, 1, timeout=10) == [b"one"]
        assert delay_q in backend._declarer.plain
        # When that queue is deleted (it expired, say)
        channel.queue_delete(delay_q)
        # Then the next delayed publish declares it with ivy's arguments and arrives
        backend.publish(q, b"two", delay=0.05)
        assert take(consumer, 1, timeout=10) == [b"two"]
        assert delay_q not in backend._declarer.plain
    finally:
        consumer.close()
        channel.queue_delete(delay_q)
        conn.close()
