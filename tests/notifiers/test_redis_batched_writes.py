"""What a Redis worker writes in batches, for real: the Streams queue's acks (written by the
backend's acker thread) and the Redis notifier's results (written by its result writer, each
ack after its result): nothing is acked before it is written, nothing handed over is dropped at
close, a late ack does not delete another delivery's message, and a flushed server's scripts
are loaded again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import wait_for
from contract import qname
from servers import PrivateRedis

pytest.importorskip("redis")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server.url
    server.stop()


def test_acks_handed_over_are_written_by_close(redis_url: str) -> None:
    from ivy.queues.redis_streams import GROUP, Keys, RedisStreamsQueueBackend

    # Given 30 messages taken and acked on one backend, its consumer left open
    backend = RedisStreamsQueueBackend(redis_url)
    other = RedisStreamsQueueBackend(redis_url)
    q = qname()
    try:
        backend.publish_many(q, [b"m%d" % i for i in range(30)])
        consumer = backend.consume(q, prefetch=8)
        for _ in range(30):
            d = consumer.get(5)
            assert d is not None
            d.ack()
        # When the backend closes
        backend.close()
        # Then another client sees every message gone, none pending
        keys = Keys(q)
        assert other.size(q) == 0
        assert other.client.xpending(keys.stream, GROUP)["pending"] == 0
        assert other.client.zcard(keys.leases) == 0
    finally:
        other.delete_queues([q])
        other.close()


def test_a_late_ack_leaves_the_message_to_its_new_holder(redis_url: str) -> None:
    from ivy.queues.redis_streams import RedisStreamsQueueBackend

    # Given a message whose first holder kept it past its lease, and a second holder
    backend = RedisStreamsQueueBackend(redis_url)
    q = qname()
    try:
        backend.publish(q, b"slow")
        first = backend.consume(q, reserve_time=0.2).get(5)
        assert first is not None
        second_consumer = backend.consume(q)
        second = second_consumer.get(5)
        assert second is not None and second.body == b"slow"
        # When the first holder acks late
        first.ack()
        # Then the message stays, the second holder's, until it acks
        assert backend.size(q) == 1
        second.ack()
        assert backend.size(q) == 0
        second_consumer.close()
    finally:
        backend.delete_queues([q])
        backend.close()


def test_results_are_stored_before_their_ack_and_close_writes_what_waits(
        redis_url: str) -> None:
    from ivy.notifiers.redis import RedisNotifier

    # Given a notifier handed 50 final results, each with an ack to follow it
    notifier = RedisNotifier(redis_url, result_ttl=60)
    reader = RedisNotifier(redis_url, result_ttl=60)
    ids = [uuid.uuid4().hex for _ in range(50)]
    seen: dict[str, bool] = {}
    lock = threading.Lock()

    def then(call_id: str) -> None:
        stored = reader.stored(call_id) is not None  # the result is there before the ack
        with lock:
            seen[call_id] = stored

    try:
        for call_id in ids[:49]:
            notifier.publish_then("ivy:notify:test", call_id, b"r-" + call_id.encode(),
                                  final=True, then=lambda c=call_id: then(c))
        wait_for(lambda: len(seen) == 49, message="49 acks")
        # When one more is handed over and the notifier closes at once
        notifier.publish_then("ivy:notify:test", ids[49], b"last", final=True,
                              then=lambda: then(ids[49]))
        notifier.close()
        # Then every ack followed its stored result, the last one's too
        assert seen == dict.fromkeys(ids, True)
        assert reader.stored(ids[49]) == b"last"
    finally:
        reader.close()


def test_a_duplicate_result_is_acked_and_the_first_kept(redis_url: str) -> None:
    from ivy.notifiers.redis import RedisNotifier

    notifier = RedisNotifier(redis_url, result_ttl=60)
    call_id = uuid.uuid4().hex
    acked: list[int] = []
    try:
        # Given a result stored, when a second run of the call records another
        notifier.publish_then("ivy:notify:test", call_id, b"first", final=True,
                              then=lambda: acked.append(1))
        notifier.publish_then("ivy:notify:test", call_id, b"second", final=True,
                              then=lambda: acked.append(2))
        wait_for(lambda: len(acked) == 2, message="both acks")
        # Then both messages are acked, in order, and the first result is kept
        assert acked == [1, 2]
        assert notifier.stored(call_id) == b"first"
    finally:
        notifier.close()


def test_scripts_are_loaded_again_on_a_flushed_server(private_redis: str) -> None:
    import redis

    from ivy.notifiers.redis import RedisNotifier
    from ivy.queues.redis_streams import RedisStreamsQueueBackend

    # Given a notifier and a queue that ran their scripts once
    notifier = RedisNotifier(private_redis, result_ttl=60)
    backend = RedisStreamsQueueBackend(private_redis)
    q = qname()
    acked: list[str] = []
    try:
        backend.publish_many(q, [b"a", b"b"])
        consumer = backend.consume(q)
        first = consumer.get(5)
        assert first is not None
        notifier.publish_then("ivy:notify:test", "one", b"1", final=True,
                              then=lambda: (acked.append("one"), first.ack()))
        wait_for(lambda: acked == ["one"], message="the first ack")
        # When the server forgets its scripts
        redis.Redis.from_url(private_redis).script_flush()
        second = consumer.get(5)
        assert second is not None
        notifier.publish_then("ivy:notify:test", "two", b"2", final=True,
                              then=lambda: (acked.append("two"), second.ack()))
        wait_for(lambda: acked == ["one", "two"], message="the second ack")
        # Then the result was stored and the message acked all the same
        assert notifier.stored("two") == b"2"
        assert backend.size(q) == 0
        consumer.close()
    finally:
        notifier.close()
        backend.close()
