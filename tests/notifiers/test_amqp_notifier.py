"""The AMQP notifier (results over RabbitMQ reply queues), for real: the notifier contract, a
result sent while the producer's connection was down, duplicates of a re-run, reply-queue
expiry, the configuration, and heartbeats refused clearly."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import amqp_notifier_url, full_queue_policy, wait_for
from contract import NotifierContract

import ivy
from ivy.message import Notification
from ivy.notifiers.base import Notifier

pika = pytest.importorskip("pika")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def reply_queue_size(amqp_url: str, queue: str) -> int | None:
    """Messages ready in ``queue``; None when it does not exist."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url.split("?")[0]))
    try:
        frame = conn.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    finally:
        if conn.is_open:
            conn.close()


def delete_queue(amqp_url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url.split("?")[0]))
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


class TestAMQPNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, amqp_url: str) -> Iterator[Notifier]:
        from ivy.notifiers.amqp import AMQPNotifier

        n = AMQPNotifier(amqp_url, reply_expires=10)
        yield n
        n.close()

    def test_result_published_before_anyone_subscribed_waits_in_the_reply_queue(
            self, notifier: Notifier, amqp_url: str) -> None:
        # Given a result published to a channel nobody consumes (the worker declares the queue)
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        notifier.publish(channel, uuid.uuid4().hex, b"early", final=True)
        # Then it waits in the producer's reply queue, with the documented x-expires
        assert reply_queue_size(amqp_url, channel) == 1
        # and a subscriber that comes later receives it, without any pending() catch-up
        sub = notifier.subscribe(channel, lambda: [])
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                got.extend(sub.get(0.5))
            assert got == [b"early"]
            # and what get returned was acknowledged: the queue is empty
            wait_for(lambda: reply_queue_size(amqp_url, channel) == 0, timeout=5,
                     message="the acknowledgement")
        finally:
            sub.close()

    def test_a_result_sent_while_the_subscriber_was_away_arrives(
            self, notifier: Notifier, amqp_url: str) -> None:
        # Given a producer that subscribed, then went away (its connection closed)
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        first = notifier.subscribe(channel, lambda: [])
        wait_for(lambda: first.ready.is_set(), message="the first subscription")  # type: ignore[attr-defined]
        first.close()
        # When a result is published meanwhile
        notifier.publish(channel, uuid.uuid4().hex, b"meanwhile", final=True)
        # Then the producer, back, receives it
        second = notifier.subscribe(channel, lambda: [])
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                got.extend(second.get(0.5))
            assert got == [b"meanwhile"]
        finally:
            second.close()

    def test_a_subscription_whose_queue_is_deleted_declares_it_again(
            self, notifier: Notifier, amqp_url: str) -> None:
        # Given a producer consuming its reply queue
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        sub = notifier.subscribe(channel, lambda: [])
        try:
            wait_for(lambda: sub.ready.is_set(), message="the subscription")  # type: ignore[attr-defined]
            # When an operator deletes the queue (the broker cancels the consumer)
            delete_queue(amqp_url, channel)
            # Then the subscription comes back with the queue declared again
            wait_for(lambda: sub.ready.is_set() and reply_queue_size(amqp_url, channel) == 0,  # type: ignore[attr-defined]
                     timeout=10, interval=0.1, message="the queue declared again")
            other = type(notifier)(amqp_url)  # a worker that never published to it
            try:
                other.publish(channel, uuid.uuid4().hex, b"after", final=True)  # type: ignore[call-arg]
            finally:
                other.close()
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                got.extend(sub.get(0.5))
            assert got == [b"after"]
        finally:
            sub.close()

    def test_quorum_reply_queues(self, amqp_url: str) -> None:
        from ivy.notifiers.amqp import AMQPNotifier

        # Given producer and worker notifiers that declare quorum reply queues
        notifier = AMQPNotifier(amqp_url, reply_expires=10, reply_queue_type="quorum")
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        try:
            # When a result is published before the producer subscribes
            notifier.publish(channel, "c", b"quorum", final=True)
            # Then the queue is a quorum queue, and the producer gets the result from it
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            try:
                with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
                    conn.channel().queue_declare(channel, durable=True,
                                                 arguments={"x-expires": 10_000})
            finally:
                conn.close()
            sub = notifier.subscribe(channel, lambda: [])
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                got.extend(sub.get(0.5))
            sub.close()
            assert got == [b"quorum"]
        finally:
            notifier.close()
            delete_queue(amqp_url, channel)

    def test_reply_queue_expires_once_its_producer_is_gone(self, amqp_url: str) -> None:
        from ivy.notifiers.amqp import AMQPNotifier

        # Given a producer whose reply queue expires 1 s after it stopped consuming
        notifier = AMQPNotifier(amqp_url, reply_expires=1)
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        sub = notifier.subscribe(channel, lambda: [])
        try:
            wait_for(lambda: sub.ready.is_set(), message="the subscription")  # type: ignore[attr-defined]
            assert reply_queue_size(amqp_url, channel) == 0
            # When the producer goes away
            sub.close()
            # Then RabbitMQ deletes its queue (with what is left in it); a look renews the
            # lease like a declaration, so look less often than it expires
            wait_for(lambda: reply_queue_size(amqp_url, channel) is None, timeout=20,
                     interval=2.5, message="the reply queue to expire")
        finally:
            notifier.close()

    def test_a_reply_queue_with_another_expiry_is_used_as_it_is(
            self, amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
        from ivy.notifiers.amqp import AMQPNotifier

        # Given a reply queue declared by a producer with reply_expires=20
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        producer = AMQPNotifier(amqp_url, reply_expires=20)
        worker = AMQPNotifier(amqp_url, reply_expires=10)
        sub = producer.subscribe(channel, lambda: [])
        try:
            wait_for(lambda: sub.ready.is_set(), message="the subscription")  # type: ignore[attr-defined]
            # When a worker configured with reply_expires=10 publishes to it
            worker.publish(channel, "c1", b"one", final=True)
            worker.publish(channel, "c2", b"two", final=True)
            # Then both arrive, and the mismatch is logged once with the fix
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                got.extend(sub.get(0.5))
            assert got == [b"one", b"two"]
            assert "exists with other arguments" in caplog.text
            assert "same reply_expires" in caplog.text
        finally:
            sub.close()
            producer.close()
            worker.close()
            delete_queue(amqp_url, channel)

    def test_events_survive_nothing_but_reach_a_fresh_subscription(
            self, notifier: Notifier) -> None:
        # an event published with nobody listening is gone; one published after subscribing
        # arrives (the exchange is declared by whichever side comes first)
        tag = uuid.uuid4().hex.encode()
        notifier.publish_event(b'{"nobody": "%s"}' % tag)
        sub = notifier.subscribe_events()
        try:
            notifier.publish_event(b'{"somebody": "%s"}' % tag)
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                got.extend(b for b in sub.get(0.5) if tag in b)
            assert got == [b'{"somebody": "%s"}' % tag]
        finally:
            sub.close()

    def test_an_events_exchange_of_another_type_is_used_as_it_is(
            self, amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
        from ivy.notifiers.amqp import EVENTS_EXCHANGE, AMQPNotifier

        # Given ivy.events declared by someone else as a direct exchange
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = conn.channel()
        channel.exchange_delete(EVENTS_EXCHANGE)
        channel.exchange_declare(EVENTS_EXCHANGE, "direct", durable=True)
        notifier = AMQPNotifier(amqp_url)
        try:
            # When a worker publishes an event: the broker refuses the fanout declaration
            notifier.publish_event(b'{"n": 1}')
            # Then the event is published to the exchange as it is, and the clash logged
            assert "exists with other arguments" in caplog.text
            notifier.publish_event(b'{"n": 2}')
        finally:
            notifier.close()
            channel.exchange_delete(EVENTS_EXCHANGE)
            conn.close()

    def test_publish_fails_loudly_when_the_broker_is_unreachable(self) -> None:
        from ivy.notifiers.amqp import AMQPNotifier

        notifier = AMQPNotifier("amqp://guest:guest@127.0.0.1:1/%2F", publish_timeout=0.5)
        try:
            with pytest.raises(ivy.PublishError, match=r"no confirm from .* within 0\.5 s"):
                notifier.publish("ivy:notify:x", "c", b"x", final=True)
            assert notifier.stored("c") is None
        finally:
            notifier.close()


def test_configuration_accepts_amqp_notifier_urls_and_refuses_bad_options(
        amqp_url: str) -> None:
    from ivy.config import make_notifier
    from ivy.notifiers.amqp import AMQPNotifier

    notifier = make_notifier("amqp://guest:secret@127.0.0.1:5672/%2F?reply_expires=120")
    assert isinstance(notifier, AMQPNotifier)
    assert notifier.reply_arguments == {"x-expires": 120_000}
    assert "secret" not in notifier.url and "secret" not in repr(notifier.url)
    notifier.close()
    same = make_notifier({"type": "amqp", "url": amqp_url, "reply_expires": 60,
                          "publish_timeout": 3})
    assert isinstance(same, AMQPNotifier)
    assert (same.reply_expires, same.publish_timeout) == (60.0, 3.0)
    same.close()
    with pytest.raises(ivy.ConfigurationError, match=r"reply_expires 'soon'.*\?reply_expires"):
        make_notifier("amqp://127.0.0.1/%2F?reply_expires=soon")
    assert make_notifier(f"{amqp_url}?persistent=false").persistent is False  # type: ignore[attr-defined]
    assert make_notifier(f"{amqp_url}?reply_queue_type=quorum").reply_arguments == {  # type: ignore[attr-defined]
        "x-expires": 600_000, "x-queue-type": "quorum"}
    with pytest.raises(ivy.ConfigurationError, match=r"persistent 'maybe'.*true or false"):
        make_notifier("amqp://127.0.0.1/%2F?persistent=maybe")
    with pytest.raises(ivy.ConfigurationError, match=r"reply_queue_type 'stream'.*quorum"):
        make_notifier("amqp://127.0.0.1/%2F?reply_queue_type=stream")
    with pytest.raises(ivy.ConfigurationError, match="minimum x-expires of 1 s"):
        make_notifier("amqp://127.0.0.1/%2F?reply_expires=0.5")
    with pytest.raises(ivy.ConfigurationError, match=r"publish_timeout -1\.0 .* > 0"):
        make_notifier("amqp://127.0.0.1/%2F?publish_timeout=-1")


# -- with producers and workers ---------------------------------------------------------------


@pytest.fixture
def amqp_only(amqp_url: str) -> tuple[str, str]:
    return amqp_url, amqp_notifier_url(amqp_url)


def own_connections(vhost: str) -> list[str]:
    """The broker's ids of this process's connections to ``vhost`` (matched by local port)."""
    import chaos  # type: ignore[import-not-found]

    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "peer_port", "vhost", "--quiet",
         "--no-table-headers"], capture_output=True, text=True, timeout=60)
    mine = chaos.own_amqp_ports(5672)
    return [parts[0] for parts in map(str.split, listed.stdout.splitlines())
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in mine
            and parts[2] == vhost]


@pytest.mark.slow
def test_result_sent_while_the_producer_connection_is_down_arrives(
        amqp_only: tuple[str, str]) -> None:
    from urllib.parse import unquote, urlsplit

    from ivy.notifiers import amqp as amqp_notifier

    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH")
    vhost = unquote(urlsplit(amqp_only[0]).path[1:]) or "/"
    producer = ivy.Ivy(*amqp_only)
    worker = ivy.Ivy(*amqp_only)
    release = threading.Event()
    back = threading.Event()  # until set, the producer's reply subscription does not resume

    @worker.register_task(name="t.slow", queue="q")
    def slow(n: int) -> int:
        release.wait(30)
        return n * 2

    try:
        worker.listen(queue="q", block=False)
        release.set()
        assert producer.send_task("t.slow", [1], queue="q").result(20) == 2
        release.clear()
        callbacks: list[Any] = []
        call = producer.send_task("t.slow", [21], queue="q",
                                  callback=lambda err, result: callbacks.append((err, result)))
        # Given the broker drops this process's connections while the call runs, and the
        # producer's reply subscription stays away after its reconnect
        consumer = producer.backends.results.current
        assert consumer is not None
        sub = consumer._subscription
        assert isinstance(sub, amqp_notifier.AMQPSubscription)
        link = sub._link
        resume = link._on_channel

        def resume_when_back(channel: Any) -> None:
            def later() -> None:
                back.wait(30)
                link.call(resume)

            threading.Thread(target=later, daemon=True).start()

        link._on_channel = resume_when_back
        pids = own_connections(vhost)
        assert pids, "no connection of this process was found on the broker"
        for pid in pids:
            subprocess.run(["rabbitmqctl", "close_connection", pid, "ivy test: connection drop"],
                           capture_output=True, timeout=60, check=True)
        # When the task finishes meanwhile, its result waits in the producer's reply queue
        release.set()
        wait_for(lambda: (reply_queue_size(amqp_only[0], producer.channel) or 0) >= 1,
                 timeout=30, interval=0.1, message="the result in the reply queue")
        assert not call.done()
        # Then once the producer is back, the result arrives, its callback once
        back.set()
        assert call.result(30) == 42
        wait_for(lambda: callbacks == [(None, 42)], message="the callback")
    finally:
        back.set()
        release.set()
        worker.close()
        producer.close()


def test_worker_heartbeats_across_notifiers_and_past_a_full_stream_read(
        amqp_only: tuple[str, str]) -> None:
    from ivy.notifiers import _amqp_workers
    from ivy.notifiers.amqp import AMQPNotifier

    # Given heartbeats written through one notifier (a worker process) and read through
    # another (ivy inspect elsewhere), among records of another client in the stream
    writer, reader = AMQPNotifier(amqp_only[1]), AMQPNotifier(amqp_only[1])
    tag = uuid.uuid4().hex[:8]
    try:
        writer.put_worker(f"{tag}-a", {"name": f"{tag}-a"}, 30)
        conn = pika.BlockingConnection(pika.URLParameters(amqp_only[0]))
        try:
            conn.channel().basic_publish("", _amqp_workers.STREAM, b"not json")
        finally:
            conn.close()
        for k in range(50):
            writer.put_worker(f"{tag}-b", {"name": f"{tag}-b", "beat": k}, 30)
        # Then the reader sees each worker once, with its last heartbeat
        mine = [w for w in reader.workers() if w["name"].startswith(tag)]
        assert mine == [{"name": f"{tag}-a"}, {"name": f"{tag}-b", "beat": 49}]
        writer.remove_worker(f"{tag}-a")
        writer.remove_worker(f"{tag}-b")
        assert [w for w in reader.workers() if w["name"].startswith(tag)] == []
    finally:
        writer.close()
        reader.close()


def test_duplicate_results_of_a_rerun_reach_the_callback_once(
        amqp_only: tuple[str, str]) -> None:
    from ivy.notifiers import amqp as amqp_notifier

    # Given a call waiting for its result, and two worker processes' notifiers (the first
    # crashed after publishing; the message ran again on the second): each with the memory
    # of its own process
    producer = ivy.Ivy(*amqp_only)
    first, second = (amqp_notifier.AMQPNotifier(amqp_only[1]) for _ in range(2))
    second._finals = amqp_notifier._Finals()
    try:
        callbacks: list[Any] = []
        call = producer.send_task("t.never_served", [1], queue="unserved",
                                  callback=lambda err, result: callbacks.append(result))
        # When both publish a final notification for it
        for notifier, result in ((first, "first"), (second, "second")):
            body = Notification(call.id, "successful", "t.never_served", result=result,
                                nonce=call.nonce).encode(producer.serializer)
            notifier.publish(producer.channel, call.id, body, final=True)
        # Then the first one settles the call, and the callback runs once
        assert call.result(10) == "first"
        wait_for(lambda: callbacks == ["first"], message="the callback")
        wait_for(lambda: reply_queue_size(amqp_only[0], producer.channel) == 0,
                 message="the duplicate read and dropped")
        assert callbacks == ["first"]
    finally:
        first.close()
        second.close()
        producer.close()


def test_features_that_need_a_store_are_refused_clearly(amqp_only: tuple[str, str]) -> None:
    # Given RabbitMQ alone: its notifier keeps results in reply queues, and no keyed store
    with ivy.Ivy(*amqp_only) as app:
        @app.register_task(name="nostore.add", queue="nostore")
        def add(a: int, b: int) -> int:
            return a + b

        fix = r"use a memory://, sqlite:// or redis:// notifier"
        # Then a workflow is refused before anything is sent (it could not be joined, and
        # would wait until its timeout), and so are unique sends and cancels
        with pytest.raises(ivy.ConfigurationError, match=f"cannot keep workflow state: {fix}"):
            app.delayed_call(ivy.chain(add.s(1, 2), add.s(3)))
        with pytest.raises(NotImplementedError, match=f"keeps no keys.*{fix}"):
            app.send_task("nostore.add", [1, 2], unique_key="k", unique_for=60)
        with pytest.raises(NotImplementedError, match=f"keeps no keys.*{fix}"):
            app.cancel("some-call-id")
        # while plain calls work
        app.listen(queue="nostore", block=False)
        assert app.delayed_call(add, 1, 2).result(30) == 3


def test_results_over_a_node_list_go_past_a_node_that_does_not_answer(amqp_url: str) -> None:
    # Given RabbitMQ alone, named by a node list whose first node does not answer
    from urllib.parse import urlsplit

    from servers import free_port

    from ivy._urls import join_hosts

    real = urlsplit(amqp_url)
    url = join_hosts(amqp_url, [f"127.0.0.1:{free_port()}",
                                f"{real.hostname}:{real.port or 5672}"])
    with ivy.Ivy(url, amqp_notifier_url(url)) as app:
        @app.register_task(name="nodes.add", queue="nodes")
        def add(a: int, b: int) -> int:
            return a + b

        app.listen(queue="nodes", block=False)
        # Then calls, results and the worker listing all reach the second node
        assert app.delayed_call(add, 2, 3).result(30) == 5
        wait_for(lambda: any(w.get("queues") == ["nodes"] for w in app.workers()), timeout=20)


def test_a_refused_result_is_sent_again_until_the_reply_queue_takes_it(
        amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from ivy.notifiers.amqp import AMQPNotifier

    # Given a quorum reply queue that holds one message and refuses (nacks) more, under a
    # policy (overflow: reject-publish), with one result in it
    notifier = AMQPNotifier(amqp_url, reply_expires=30, reply_queue_type="quorum",
                            publish_timeout=20)
    channel = f"ivy:notify:{uuid.uuid4().hex}"
    results: list[BaseException | None] = []
    try:
        with full_queue_policy(amqp_url, channel):
            ids = [uuid.uuid4().hex for _ in range(3)]  # finals are remembered per call id
            notifier.publish(channel, ids[0], b"one", final=True)
            # When two more results are published, one after the other (the queue may take
            # one more before refusing: RabbitMQ applies the limit eventually)
            caplog.set_level("INFO", logger="ivy.amqp")

            def publish_more() -> None:
                for call_id, body in ((ids[1], b"r2"), (ids[2], b"r3")):
                    try:
                        notifier.publish(channel, call_id, body, final=True)
                        results.append(None)
                    except BaseException as exc:
                        results.append(exc)

            publisher = threading.Thread(target=publish_more)
            publisher.start()
            wait_for(lambda: "refused (nack), sending again" in caplog.text, timeout=20,
                     message="a refused notification sent again")
            # Then once the producer takes the results, the refused one goes in too: every
            # publish returns without an error, and every result arrives
            sub = notifier.subscribe(channel, lambda: [])
            got: list[bytes] = []
            try:
                wait_for(lambda: got.extend(sub.get(0.2)) or len(got) >= 3, timeout=20,
                         message="three results")
            finally:
                sub.close()
            publisher.join(20)
            assert results == [None, None]
            assert sorted(got) == [b"one", b"r2", b"r3"]
    finally:
        notifier.close()
        delete_queue(amqp_url, channel)


def test_remembered_results_are_bounded_in_bytes(amqp_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy.notifiers import amqp as amqp_notifier

    # Given an AMQP notifier that may remember 1 MiB of final notifications (issue 20, row 10)
    monkeypatch.setattr(amqp_notifier, "MAX_REMEMBERED_BYTES", 1024 * 1024)
    notifier = amqp_notifier.AMQPNotifier(amqp_url, reply_expires=30)
    notifier._finals = amqp_notifier._Finals()
    channel = f"ivy:notify:{uuid.uuid4().hex}"
    sub = notifier.subscribe(channel, lambda: [])  # declares the reply queue
    try:
        # When it publishes 3 MiB of results, 100 KiB each
        ids = [uuid.uuid4().hex for _ in range(30)]
        bodies = {i: i.encode() * 3200 for i in ids}
        for call_id in ids:
            notifier.publish(channel, call_id, bodies[call_id], final=True)
        # Then it keeps the latest ones, within the bound, and forgot the oldest
        finals = notifier._finals
        assert finals.nbytes == sum(len(b) for b in finals.bodies.values()) <= 1024 * 1024
        assert notifier.stored(ids[-1]) == bodies[ids[-1]]
        assert notifier.stored(ids[0]) is None
    finally:
        sub.close()
        notifier.close()
        delete_queue(amqp_url, channel)


def test_a_result_to_a_reply_queue_deleted_meanwhile_is_not_lost(amqp_url: str) -> None:
    from ivy.notifiers.amqp import AMQPNotifier

    # Given a notifier that published to a reply queue (so it has declared it), and the
    # queue then deleted by someone else (issue 20, row 3)
    notifier = AMQPNotifier(amqp_url, reply_expires=30, publish_timeout=10)
    channel = f"ivy:notify:{uuid.uuid4().hex}"
    try:
        notifier.publish(channel, uuid.uuid4().hex, b"first", final=True)
        assert reply_queue_size(amqp_url, channel) == 1
        delete_queue(amqp_url, channel)
        # When it publishes the next result there
        notifier.publish(channel, uuid.uuid4().hex, b"second", final=True)
        # Then the broker's return makes it declare the queue again and resend: the result
        # is in the queue, not confirmed and dropped
        assert reply_queue_size(amqp_url, channel) == 1
    finally:
        notifier.close()
        delete_queue(amqp_url, channel)


def test_results_delivered_before_their_reply_queue_was_deleted_are_kept(amqp_url: str) -> None:
    from ivy.notifiers.amqp import AMQPNotifier

    # Given a producer's subscription holding results it has not read yet
    notifier = AMQPNotifier(amqp_url, reply_expires=30, publish_timeout=10)
    channel = f"ivy:notify:{uuid.uuid4().hex}"
    sub = notifier.subscribe(channel, lambda: [])
    try:
        assert sub.ready.wait(10)  # type: ignore[attr-defined]
        for body in (b"r1", b"r2", b"r3"):
            notifier.publish(channel, uuid.uuid4().hex, body, final=True)
        wait_for(lambda: len(sub._buffer) == 3,  # type: ignore[attr-defined]
                 message="the results delivered to the subscription")
        # When the reply queue is deleted (the broker cancels the consumer; the unacked
        # deliveries cannot come back from a queue that is gone)
        delete_queue(amqp_url, channel)
        wait_for(lambda: not sub.ready.is_set(),  # type: ignore[attr-defined]
                 message="the subscription to notice")
        # Then the results it held are still handed out
        got: list[bytes] = []
        wait_for(lambda: got.extend(sub.get(0.2)) or len(got) >= 3, timeout=10,
                 message="the held results")
        assert sorted(got) == [b"r1", b"r2", b"r3"]
    finally:
        sub.close()
        notifier.close()
        delete_queue(amqp_url, channel)
