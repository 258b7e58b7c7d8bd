"""The contract suites: every queue backend and every notifier must pass these.

A backend's test module subclasses :class:`QueueBackendContract` / :class:`NotifierContract`
and provides a ``backend`` / ``notifier`` fixture (huey's StorageTests idea)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.notifiers.base import Notifier
from ivy.queues.base import Consumer, QueueBackend

#: A delay or lease short enough for tests and long enough to observe; backends whose smallest
#: unit is larger (SQS: seconds) override it.
SHORT = 0.3


def qname() -> str:
    return f"q{uuid.uuid4().hex[:10]}"


def take(consumer: Consumer, n: int, timeout: float = 5.0) -> list[bytes]:
    """Get ``n`` deliveries (each must come within ``timeout``), ack them, return their bodies
    in the order received."""
    got = []
    for _ in range(n):
        d = consumer.get(timeout)
        assert d is not None, f"delivery {len(got) + 1} of {n} did not come in {timeout} s"
        got.append(d.body)
        d.ack()
    return got


def worker_apps(backend: QueueBackend, n: int = 1) -> list[ivy.Ivy]:
    """``n`` apps (a producer, workers) on ``backend`` sharing one in-process notifier, with
    quick retries."""
    notifier = f"memory://contract-{uuid.uuid4().hex[:8]}"
    return [ivy.Ivy(backend, notifier, retry_base_delay=0.05, retry_max_delay=0.1)
            for _ in range(n)]


def close_all(apps: list[ivy.Ivy], workers: list[ivy.Worker]) -> None:
    """Stop every worker (each finishes what it runs), then close the apps."""
    for worker in workers:
        worker.stop(30)
    for app in apps:
        app.close()


class QueueBackendContract:
    short = SHORT
    #: False where a retry redelivers the received message as it was (SQS changes its
    #: visibility, IronMQ releases it): the delivery count then tells the attempt
    retry_replaces_body = True
    #: False where the service deletes expired dead letters on its own schedule (SQS's
    #: retention, IronMQ's message_expiration): they are only hidden from listings at once
    deletes_expired_dead_letters = True
    #: False where two consumers receiving at once may both get a message (SQS standard
    #: queues deliver "at least once"; moto's server shows it too, raw boto3 included)
    concurrent_receives_are_exclusive = True

    def test_publish_then_consume_and_ack(self, backend: QueueBackend) -> None:
        # Given a message on a queue
        q = qname()
        backend.publish(q, b'{"n": 1}')
        # When a consumer gets and acks it
        consumer = backend.consume(q)
        delivery = consumer.get(5)
        assert delivery is not None
        assert delivery.body == b'{"n": 1}'
        assert delivery.delivery_count == 1
        delivery.ack()
        # Then it is gone
        assert consumer.get(self.short) is None
        assert backend.size(q) == 0
        consumer.close()

    def test_get_times_out_on_an_empty_queue(self, backend: QueueBackend) -> None:
        consumer = backend.consume(qname())
        started = time.monotonic()
        assert consumer.get(self.short) is None
        assert time.monotonic() - started >= self.short * 0.9
        consumer.close()

    def test_fifo_within_one_priority(self, backend: QueueBackend) -> None:
        q = qname()
        for i in range(5):
            backend.publish(q, str(i).encode())
        consumer = backend.consume(q)
        assert take(consumer, 5) == [b"0", b"1", b"2", b"3", b"4"]
        consumer.close()

    def test_higher_priority_first(self, backend: QueueBackend) -> None:
        if not backend.supports_priority:
            return
        q = qname()
        backend.publish(q, b"low", priority=0)
        backend.publish(q, b"high", priority=9)
        consumer = backend.consume(q)
        first = consumer.get(5)
        assert first is not None and first.body == b"high"
        first.ack()
        second = consumer.get(5)
        assert second is not None and second.body == b"low"
        second.ack()
        consumer.close()

    def test_queues_are_separate(self, backend: QueueBackend) -> None:
        a, b = qname(), qname()
        backend.publish(a, b"for a")
        consumer = backend.consume(b)
        assert consumer.get(self.short) is None
        consumer.close()
        assert backend.size(a) == 1

    def test_bodies_are_bytes_exactly(self, backend: QueueBackend) -> None:
        q = qname()
        body = bytes(range(256))
        backend.publish(q, body)
        consumer = backend.consume(q)
        d = consumer.get(5)
        assert d is not None and d.body == body
        d.ack()
        consumer.close()

    def test_delayed_publish_waits(self, backend: QueueBackend) -> None:
        q = qname()
        backend.publish(q, b"later", delay=self.short * 3)
        consumer = backend.consume(q)
        assert consumer.get(self.short) is None
        d = consumer.get(self.short * 10)
        assert d is not None and d.body == b"later"
        d.ack()
        consumer.close()

    def test_oldest_age_counts_from_when_a_message_became_due(self,
                                                              backend: QueueBackend) -> None:
        q = qname()
        if backend.oldest_age(q) is None:
            return  # this backend cannot tell (the default): nothing to check
        assert backend.oldest_age(q) == 0.0
        backend.publish(q, b"later", delay=60)  # not due: not waiting for a worker yet
        backend.publish(q, b"now")
        wait_for(lambda: (backend.oldest_age(q) or 0.0) >= 0.3, message="the age to grow")
        age = backend.oldest_age(q)
        assert age is not None and 0.3 <= age < 30
        consumer = backend.consume(q)
        try:
            delivery = consumer.get(5)
            assert delivery is not None and delivery.body == b"now"
            assert backend.oldest_age(q) == 0.0  # reserved: not waiting any more
            delivery.ack()
        finally:
            consumer.close()

    def test_retry_redelivers_after_delay(self, backend: QueueBackend) -> None:
        q = qname()
        backend.publish(q, b"first")
        consumer = backend.consume(q)
        d = consumer.get(5)
        assert d is not None
        started = time.monotonic()
        d.retry(self.short * 2, b"second")
        again = consumer.get(self.short * 20)
        assert again is not None
        assert time.monotonic() - started >= self.short * 2 * 0.9
        assert again.body == (b"second" if self.retry_replaces_body else b"first")
        assert again.delivery_count == 2
        again.ack()
        consumer.close()

    def test_dead_letter_keeps_reason_and_stops_delivery(self, backend: QueueBackend) -> None:
        q = qname()
        backend.publish(q, b"poison")
        consumer = backend.consume(q)
        d = consumer.get(5)
        assert d is not None
        d.dead_letter("not JSON")
        assert consumer.get(self.short) is None
        assert backend.size(q) == 0
        dead = backend.dead_letters(q)
        assert [(x.body, x.reason) for x in dead] == [(b"poison", "not JSON")]
        consumer.close()

    def test_unacked_message_comes_back_after_reservation(self, backend: QueueBackend) -> None:
        # Given a consumer that takes a message and dies without acking
        q = qname()
        backend.publish(q, b"job")
        lost = backend.consume(q, reserve_time=self.short)
        first = lost.get(5)
        assert first is not None
        # When its reservation runs out
        other = backend.consume(q, reserve_time=30)
        again = other.get(self.short * 20)
        # Then another consumer gets the message again
        assert again is not None and again.body == b"job"
        assert again.delivery_count == 2
        # and the first holder's late ack does not delete the new delivery
        first.ack()
        assert backend.size(q) == 1
        again.ack()
        assert backend.size(q) == 0
        other.close()

    def test_extend_keeps_the_reservation(self, backend: QueueBackend) -> None:
        q = qname()
        backend.publish(q, b"long task")
        holder = backend.consume(q, reserve_time=self.short)
        d = holder.get(5)
        assert d is not None
        other = backend.consume(q)
        for _ in range(4):
            d.extend(self.short * 3)
            assert other.get(self.short) is None
        d.ack()
        assert backend.size(q) == 0
        other.close()

    def test_close_returns_prefetched_messages_at_once(self, backend: QueueBackend) -> None:
        q = qname()
        for i in range(4):
            backend.publish(q, str(i).encode())
        first = backend.consume(q, prefetch=4, reserve_time=60)
        d = first.get(5)
        assert d is not None and d.body == b"0"
        first.close()  # the 3 prefetched, unstarted ones go back now, not in 60 s
        second = backend.consume(q, prefetch=4)
        assert sorted(take(second, 3)) == [b"1", b"2", b"3"]
        d.ack()
        second.close()

    def test_concurrent_consumers_share_without_duplicates(self, backend: QueueBackend) -> None:
        q = qname()
        n = 200
        for i in range(n):
            backend.publish(q, str(i).encode())
        seen: list[bytes] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 60

        def consume() -> None:
            consumer = backend.consume(q, prefetch=5)
            while True:
                d = consumer.get(self.short)
                if d is None:  # an empty get ends a consumer once all came (or time is up)
                    if len(seen) >= n or time.monotonic() > deadline:
                        break
                    continue
                with lock:
                    seen.append(d.body)
                d.ack()
            consumer.close()

        threads = [threading.Thread(target=consume) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        expected = sorted(str(i).encode() for i in range(n))
        report = f"{len(seen)} deliveries of {len(set(seen))} distinct messages, {n} sent"
        if self.concurrent_receives_are_exclusive:
            assert sorted(seen) == expected, report
        else:  # nothing lost; a copy now and then is the backend's at-least-once
            assert sorted(set(seen)) == expected, report

    # -- dead-letter tools ------------------------------------------------------------------

    def dead_letter_all(self, backend: QueueBackend, q: str, bodies: list[bytes]) -> None:
        """Publish ``bodies`` to ``q`` and dead-letter each (the first after one retry, so
        that its delivery count is 2), in order."""
        consumer = backend.consume(q)
        for i, body in enumerate(bodies):
            backend.publish(q, body)
            d = consumer.get(10)
            assert d is not None and d.body == body
            if i == 0:
                d.retry(0)
                d = consumer.get(self.short * 20)
                assert d is not None and d.delivery_count == 2
            d.dead_letter(f"reason {i}")
        consumer.close()
        wait_for(lambda: len(backend.dead_letters(q)) == len(bodies), timeout=20,
                 message=f"{len(bodies)} dead letters")

    def test_dead_letter_ids_are_stable_and_listing_keeps_them(
            self, backend: QueueBackend) -> None:
        # Given three dead letters
        q = qname()
        self.dead_letter_all(backend, q, [b"a", b"b", b"c"])
        # When they are listed twice
        first, second = backend.dead_letters(q), backend.dead_letters(q)
        # Then each has its own id, the same in both listings, and none was lost
        assert [d.body for d in first] == [b"a", b"b", b"c"]
        assert [d.reason for d in first] == ["reason 0", "reason 1", "reason 2"]
        assert len({d.id for d in first}) == 3 and all(d.id for d in first)
        assert [d.id for d in second] == [d.id for d in first]
        assert backend.size(q) == 0

    def test_requeue_dead_by_id_then_all(self, backend: QueueBackend) -> None:
        # Given three dead letters, the first delivered twice before it died
        q = qname()
        self.dead_letter_all(backend, q, [b"a", b"b", b"c"])
        a, b, c = backend.dead_letters(q)
        # When one is requeued by its id (with an id that is not there)
        assert backend.requeue_dead(q, [b.id, "no-such-id"]) == 1
        # Then it is a fresh message on the queue, and the others stay dead
        consumer = backend.consume(q)
        got = consumer.get(10)
        assert got is not None and got.body == b"b" and got.delivery_count == 1
        got.ack()
        assert [d.id for d in backend.dead_letters(q)] == [a.id, c.id]
        # When the rest are requeued, through a rewrite
        assert backend.requeue_dead(q, rewrite=lambda body: (body + b"!", None)) == 2
        # Then they come back rewritten, counted from 1 again, and no dead letter is left
        again = []
        for _ in range(2):
            d = consumer.get(10)
            assert d is not None, f"only {len(again)} of 2 requeued messages came"
            again.append((d.body, d.delivery_count))
            d.ack()
        assert sorted(again) == [(b"a!", 1), (b"c!", 1)]
        assert backend.dead_letters(q) == []
        assert backend.requeue_dead(q) == 0
        consumer.close()

    def test_dead_letters_expire_after_their_ttl(self, backend: QueueBackend) -> None:
        # Given a backend that keeps dead letters for 3 s, and one dead letter
        default = backend.dead_letter_ttl
        backend.dead_letter_ttl = 3.0
        try:
            q = qname()
            consumer = backend.consume(q)

            def dead_letter(body: bytes) -> None:
                backend.publish(q, body)
                d = consumer.get(10)
                assert d is not None and d.body == body
                d.dead_letter("expiring")

            dead_letter(b"old")
            wait_for(lambda: [d.body for d in backend.dead_letters(q)] == [b"old"],
                     timeout=2.5, message="the dead letter listed within its TTL")
            # When its TTL has passed
            wait_for(lambda: backend.dead_letters(q) == [], timeout=20,
                     message="the dead letter to expire")
            # Then it is not listed beside a new one, and (where the backend deletes them
            # itself) it is gone from the store: a purge finds only the new one
            dead_letter(b"new")
            wait_for(lambda: [d.body for d in backend.dead_letters(q)] == [b"new"],
                     timeout=2.5, message="the new dead letter alone")
            consumer.close()
            if self.deletes_expired_dead_letters:
                purged = backend.purge_dead(q)
                assert purged == 1, purged
        finally:
            backend.dead_letter_ttl = default

    def test_purge_dead_counts_and_empties(self, backend: QueueBackend) -> None:
        q = qname()
        self.dead_letter_all(backend, q, [b"x", b"y"])
        backend.publish(q, b"alive")
        assert backend.purge_dead(q) == 2
        assert backend.dead_letters(q) == []
        assert backend.purge_dead(q) == 0
        assert backend.size(q) == 1  # the queue itself is untouched
        # a queue that never had dead letters
        other = qname()
        assert backend.purge_dead(other) == 0
        assert backend.requeue_dead(other) == 0


    # -- a worker on this backend ---------------------------------------------------------

    def test_worker_keeps_prefetched_messages_reserved(self, backend: QueueBackend) -> None:
        # Given worker A that fetched 4 tasks at once (its prefetch) and runs them one by one,
        # so the last waits in its buffer for longer than the reservation; on backends without
        # a prefetch buffer (memory) each message is taken only when an executor is free
        q = qname()
        lease = max(1.0, self.short * 2)
        runs: list[tuple[str, int]] = []
        lock = threading.Lock()
        apps = worker_apps(backend, 2)
        for tag, app in zip("ab", apps, strict=True):
            def work(i: int, tag: str = tag) -> int:
                with lock:
                    runs.append((tag, i))
                time.sleep(lease * 0.6)
                return i

            app.register_task(work, name="contract.work", queue=q)
        # The queue exists and takes messages before the calls go: a quorum queue just
        # declared may refuse (nack) publishes for a moment, and ivy then reconnects and sends
        # again what was unconfirmed, which can queue a call twice (at least once) and would
        # read here as a lease that lapsed
        backend.publish(q, b"warm-up")
        warm = backend.consume(q, prefetch=1)
        delivery = warm.get(30)
        assert delivery is not None and delivery.body == b"warm-up"
        delivery.ack()
        warm.close()
        workers: list[ivy.Worker] = []
        try:
            calls = [apps[0].delayed_call("contract.work", i) for i in range(4)]
            workers.append(apps[0].listen(queue=q, concurrency=1, reserve_time=lease,
                                          block=False))
            wait_for(lambda: runs, timeout=30, message="worker A to start a task")
            # When worker B competes on the same queue all that time
            workers.append(apps[1].listen(queue=q, concurrency=1, reserve_time=lease,
                                          block=False))
            # Then each call runs exactly once: no lease lapsed while a message waited
            assert sorted(c.result(60) for c in calls) == [0, 1, 2, 3]
        finally:
            close_all(apps, workers)  # whatever ran twice has started by then
        assert Counter(i for _, i in runs) == {0: 1, 1: 1, 2: 1, 3: 1}, runs

    def test_graceful_stop_with_tasks_in_flight(self, backend: QueueBackend) -> None:
        # Given a worker with concurrency 2 that has acknowledged a call already (SQS: its
        # deleter thread runs), and then runs 2 of 5 queued tasks
        q = qname()
        [app] = worker_apps(backend)
        go_on = threading.Event()
        runs: list[int] = []
        lock = threading.Lock()

        @app.register_task(name="contract.slow", queue=q)
        def slow(i: int) -> int:
            with lock:
                runs.append(i)
            go_on.wait(60)
            return i

        @app.register_task(name="contract.quick", queue=q)
        def quick() -> str:
            return "quick"

        workers: list[ivy.Worker] = []
        try:
            first = app.listen(queue=q, concurrency=2, block=False)
            workers.append(first)
            assert app.delayed_call(quick).result(30) == "quick"
            wait_for(lambda: backend.size(q) == 0, timeout=30, message="the first ack")
            calls = [app.delayed_call(slow, i) for i in range(5)]
            wait_for(lambda: len(runs) == 2, timeout=30, message="2 tasks to start")
            # When it is stopped while they run
            stopper = threading.Thread(target=first.stop)
            stopper.start()
            wait_for(lambda: not first.running, message="the worker to begin stopping")
            go_on.set()
            # Then the 2 finish, are acknowledged, and their calls get results
            assert first.join(30), "the stopping worker still holds messages after 30 s"
            in_flight = sorted(runs)
            assert [calls[i].result(10) for i in in_flight] == in_flight
            # and the 3 unstarted ones come back: a second worker runs each once
            workers.append(app.listen(queue=q, concurrency=2, block=False))
            assert sorted(c.result(60) for c in calls) == [0, 1, 2, 3, 4]
            wait_for(lambda: backend.size(q) == 0, timeout=60, message="every ack")
            assert backend.dead_letters(q) == []
            stopper.join(10)
        finally:
            go_on.set()
            close_all([app], workers)
        assert sorted(runs) == [0, 1, 2, 3, 4]

    def test_deferred_call_is_not_an_attempt(self, backend: QueueBackend,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        # Given calls whose eta is later than their delivery (the backend is made to ignore
        # the delay, as SQS does past 900 s), so the worker defers each once
        q = qname()
        [app] = worker_apps(backend)
        delays: list[float] = []

        def early(publish: Any) -> Any:
            def without_delay(queue: str, body: Any, **options: Any) -> Any:
                delays.append(options.pop("delay", 0.0))
                return publish(queue, body, **options)
            return without_delay

        monkeypatch.setattr(backend, "publish", early(backend.publish))
        monkeypatch.setattr(backend, "publish_many", early(backend.publish_many))
        monkeypatch.setattr(backend, "send_many", early(backend.send_many))
        runs: list[str] = []

        @app.register_task(name="contract.once", queue=q)
        def once() -> str:
            runs.append("once")
            return "ran"

        @app.register_task(name="contract.flaky", queue=q, retry=True, max_retries=2)
        def flaky() -> None:
            runs.append("flaky")
            raise ValueError("always")

        try:
            app.listen(queue=q, concurrency=2, block=False)
            delay = self.short * 2
            sent = time.time()
            plain = app.send_task(once, delay=delay)
            retried = app.send_task(flaky, delay=delay)
            assert any(d > 0 for d in delays), "the calls were not sent with a delay"
            # Then the deferred delivery counts as no attempt
            assert plain.result(60) == "ran"
            assert time.time() >= sent + delay * 0.9
            assert plain.attempt == 0
            # and a task with retries still gets all of them
            with pytest.raises(ivy.RemoteTaskError, match="always"):
                retried.result(60)
            assert retried.attempt == 2
            assert runs.count("flaky") == 3 and runs.count("once") == 1
        finally:
            app.close()


class NotifierContract:
    def test_subscriber_receives_published(self, notifier: Notifier) -> None:
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        sub = notifier.subscribe(channel, lambda: [])
        sub.get(0.05)  # establish the subscription
        call_id = uuid.uuid4().hex
        notifier.publish(channel, call_id, b"running", final=False)
        notifier.publish(channel, call_id, b"done", final=True)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got.extend(sub.get(0.5))
        assert got == [b"running", b"done"]
        sub.close()

    def test_late_subscriber_gets_stored_final_of_pending_calls(self, notifier: Notifier) -> None:
        # Given a result published while nobody listened
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        late = uuid.uuid4().hex
        notifier.publish(channel, late, b"result", final=True)
        # When the producer subscribes with that call pending
        sub = notifier.subscribe(channel, lambda: [late, "other"])
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got.extend(sub.get(0.5))
        # Then it receives it
        assert b"result" in got
        sub.close()

    def test_first_final_notification_wins(self, notifier: Notifier) -> None:
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        call_id = uuid.uuid4().hex
        notifier.publish(channel, call_id, b"first", final=True)
        notifier.publish(channel, call_id, b"second", final=True)
        assert notifier.stored(call_id) == b"first"

    def test_a_final_with_another_nonce_is_stored_beside_the_first_and_sent(
            self, notifier: Notifier) -> None:
        # Given a final notification stored first under a call id, without the call's nonce
        # (forged by someone who learned the id), and a producer subscribed to the channel
        channel = f"ivy:notify:{uuid.uuid4().hex}"
        call_id, nonce = uuid.uuid4().hex, uuid.uuid4().hex[:20]
        sub = notifier.subscribe(channel, lambda: [])
        sub.get(0.05)  # establish the subscription
        notifier.publish(channel, call_id, b'{"forged":"other-nonce"}', final=True,
                         nonce="0badc0ffee")
        # When the call's own result comes, echoing its nonce, and then a duplicate of it
        own = b'{"own":"%s"}' % nonce.encode()
        notifier.publish(channel, call_id, own, final=True, nonce=nonce)
        notifier.publish(channel, call_id, own + b" again", final=True, nonce=nonce)
        # Then the first stays under the id, the call's own is found with its nonce,
        assert notifier.stored(call_id) == b'{"forged":"other-nonce"}'
        assert notifier.stored(call_id, nonce) == own
        assert notifier.stored(call_id, "feedfacefeedface") == b'{"forged":"other-nonce"}'
        # and both reached the channel, the duplicate not
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got.extend(sub.get(0.5))
        assert got == [b'{"forged":"other-nonce"}', own]
        assert sub.get(0.3) == []
        # and a result that carries the first's nonce is a duplicate: neither stored nor sent
        notifier.publish(channel, call_id, b"dup", final=True, nonce="other-nonce")
        assert notifier.stored(call_id, "other-nonce") == b'{"forged":"other-nonce"}'
        assert sub.get(0.3) == []
        sub.close()

    def test_running_status_is_not_stored(self, notifier: Notifier) -> None:
        call_id = uuid.uuid4().hex
        notifier.publish(f"ivy:notify:{uuid.uuid4().hex}", call_id, b"running", final=False)
        assert notifier.stored(call_id) is None

    def test_channels_are_separate(self, notifier: Notifier) -> None:
        mine, other = (f"ivy:notify:{uuid.uuid4().hex}" for _ in range(2))
        sub = notifier.subscribe(mine, lambda: [])
        sub.get(0.05)
        notifier.publish(other, uuid.uuid4().hex, b"not mine", final=True)
        assert sub.get(0.3) == []
        sub.close()

    # -- live workers and task events ----------------------------------------------------

    def test_worker_heartbeat_is_listed_refreshed_and_removed(self, notifier: Notifier) -> None:
        # Given two workers that wrote their heartbeats (names sort in reverse of writing)
        tag = uuid.uuid4().hex[:8]
        b, a = f"{tag}-b", f"{tag}-a"
        notifier.put_worker(b, {"name": b, "processed": 0, "queues": ["q"]}, 30)
        notifier.put_worker(a, {"name": a, "processed": 0, "queues": ["q"]}, 30)
        # When one writes again
        notifier.put_worker(b, {"name": b, "processed": 7, "queues": ["q"]}, 30)
        # Then each is listed once, ordered by name, with its latest heartbeat
        mine = [w for w in notifier.workers() if w["name"].startswith(tag)]
        assert mine == [{"name": a, "processed": 0, "queues": ["q"]},
                        {"name": b, "processed": 7, "queues": ["q"]}]
        # and a removed worker is gone at once, the other stays
        notifier.remove_worker(b)
        assert [w["name"] for w in notifier.workers() if w["name"].startswith(tag)] == [a]
        notifier.remove_worker(a)

    def test_worker_heartbeat_expires_after_its_ttl(self, notifier: Notifier) -> None:
        # Given a worker whose last heartbeat had a short TTL (it was killed), and one alive
        tag = uuid.uuid4().hex[:8]
        killed, alive = f"{tag}-killed", f"{tag}-alive"
        notifier.put_worker(killed, {"name": killed}, 0.3)
        notifier.put_worker(alive, {"name": alive}, 30)
        assert {w["name"] for w in notifier.workers()} >= {killed, alive}
        # Then the killed one disappears by itself; the live one stays
        wait_for(lambda: killed not in {w["name"] for w in notifier.workers()}, timeout=5,
                 message="the expired heartbeat to disappear")
        assert alive in {w["name"] for w in notifier.workers()}
        # and a later heartbeat of another worker does not bring it back
        notifier.put_worker(alive, {"name": alive}, 30)
        assert killed not in {w["name"] for w in notifier.workers()}
        notifier.remove_worker(alive)

    def test_events_reach_every_subscription_in_order(self, notifier: Notifier) -> None:
        # Given an event published before anyone subscribed, and two subscriptions
        tag = uuid.uuid4().hex.encode()
        notifier.publish_event(b'{"before": "%s"}' % tag)
        subs = [notifier.subscribe_events() for _ in range(2)]
        try:
            # When three events are published
            sent = [b'{"n": %d, "tag": "%s"}' % (i, tag) for i in range(3)]
            for body in sent:
                notifier.publish_event(body)
            # Then each subscription gets the three, in order, and not the earlier one
            for sub in subs:
                got: list[bytes] = []
                deadline = time.monotonic() + 5
                while len(got) < 3 and time.monotonic() < deadline:
                    got.extend(b for b in sub.get(0.5) if tag in b)
                assert got == sent
                assert [b for b in sub.get(0.2) if tag in b] == []
        finally:
            for sub in subs:
                sub.close()

    def test_closing_an_events_subscription_interrupts_its_get(self, notifier: Notifier) -> None:
        sub = notifier.subscribe_events()
        closer = threading.Timer(0.2, sub.close)
        started = time.monotonic()
        closer.start()
        assert sub.get(10) == []
        assert time.monotonic() - started < 5
        closer.join()
