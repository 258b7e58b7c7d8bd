"""A real 3-node RabbitMQ cluster on this machine (private nodes, started and stopped here; the
machine's own node on 5672 is never touched): quorum queues keep ivy's calls going when the
node that leads the queue stops, and producers and workers named every node fail over to the
others. One cluster serves the whole module (starting one takes 15-60 s)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import require_service, wait_for
from servers import PrivateRabbit, PrivateRabbitCluster

import ivy

pytest.importorskip("pika")
pytest.importorskip("redis")

from ivy.queues.amqp import AMQPDelivery, AMQPQueueBackend

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

#: an ack handed to the connection this long before the node stopped counts as acknowledged
#: (the broker had it and replicated it): such a call must not run again
ACKED_BEFORE = 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateRabbitCluster]:
    why = PrivateRabbit.available()
    require_service("a private RabbitMQ cluster", why is None, why or "")
    with tempfile.TemporaryDirectory(prefix="ivy-cluster-") as tmp:
        os.chmod(tmp, 0o755)  # the rabbitmq user reaches its folders through this one
        nodes = PrivateRabbitCluster(Path(tmp))
        try:
            nodes.start()
            yield nodes
        finally:
            nodes.stop()


@pytest.mark.parametrize(("how", "worker_on"), [
    ("stop", "leader"), ("kill", "leader"), ("kill", "follower")])
def test_calls_survive_losing_the_node_that_leads_the_queue(
        cluster: PrivateRabbitCluster, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        how: str, worker_on: str) -> None:
    # Given a quorum queue on the cluster (every node running), and its leader
    cluster.restart_stopped()
    q = f"qc{uuid.uuid4().hex[:10]}"
    probe = AMQPQueueBackend(cluster.url(), queue_type="quorum")
    probe.consume(q).close()  # declares it (and q.dead) on the cluster
    probe.close()
    leader = cluster.leader(q)
    others = [n for n in cluster.nodes if n is not leader]
    # and a producer that reaches the leader first, and a worker (its own connections) that
    # reaches the leader first too, or a follower (whose connection then stays)
    url = cluster.url(order=[leader, *others]) + "?queue_type=quorum"
    producer = ivy.Ivy(url, redis_url)
    worker_app = ivy.Ivy(url if worker_on == "leader" else
                         cluster.url(order=[*others, leader]) + "?queue_type=quorum", redis_url)
    runs: Counter[int] = Counter()
    acked: dict[bytes, float] = {}
    lock = threading.Lock()

    def record(i: int) -> int:
        with lock:
            runs[i] += 1
        time.sleep(0.01)
        return i

    for app in (producer, worker_app):
        app.register_task(record, name="cluster.record", queue=q)
    ack = AMQPDelivery._ack

    def timed_ack(self: AMQPDelivery) -> None:
        acked[self.body] = time.monotonic()
        ack(self)

    monkeypatch.setattr(AMQPDelivery, "_ack", timed_ack)
    arrivals: dict[int, float] = {}
    sent_at: list[float] = []
    calls: list[ivy.Call] = []
    sending = threading.Event()
    stop_at = 0.0
    try:
        worker_app.listen(queue=q, concurrency=4, block=False)

        def arrived(i: int) -> None:
            arrivals.setdefault(i, time.monotonic())

        def send() -> None:  # one call every 10 ms until told to stop
            i = 0
            while not sending.is_set():
                sent_at.append(time.monotonic())
                call = producer.delayed_call("cluster.record", i)
                call.add_done_callback(lambda c, i=i: arrived(i))
                calls.append(call)
                i += 1
                time.sleep(0.01)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_for(lambda: len(arrivals) >= 100, timeout=60, message="100 results before the stop")
        # When the leader stops (rabbitmqctl stop), or crashes (SIGKILL), with calls in flight
        pid = leader.vm_pid()
        stop_at = time.monotonic()
        leader.stop() if how == "stop" else leader.kill(pid)
        stopped = time.monotonic()
        wait_for(lambda: any(t > stopped for t in arrivals.values()), timeout=90,
                 message="a result after the leader stopped")
        sent_after = len(calls)
        wait_for(lambda: len(calls) >= sent_after + 100, timeout=60,
                 message="100 more calls sent after the failover")
        sending.set()
        sender.join(10)
        # Then every call gets its result
        results = [c.result(90) for c in calls]
        assert results == list(range(len(calls)))
    finally:
        sending.set()
        worker_app.close()
        producer.close()
    # every call ran, and none whose ack the broker had before the stop ran twice
    assert set(runs) == set(range(len(calls)))
    index = {c.id: i for i, c in enumerate(calls)}
    acked_early = {index[json.loads(body)["id"]] for body, t in acked.items()
                   if t < stop_at - ACKED_BEFORE}
    twice = sorted(i for i in acked_early if runs[i] > 1)
    assert not twice, f"acknowledged before the stop, yet ran again: {twice}"
    # and the failover time: from the stop to the first result after the longest silence,
    # and the longest wait of a call (sent -> result) before and around the stop
    times = sorted(t for t in arrivals.values() if t >= stop_at)
    gaps = [(b - a, b) for a, b in zip([stop_at, *times], times, strict=False)]
    longest, resumed = max(gaps)
    waits = [(arrivals[i] - sent_at[i], sent_at[i]) for i in range(len(calls))]
    before = sorted(w for w, t in waits if t < stop_at)
    worst, worst_sent = max((w, t) for w, t in waits if t >= stop_at - 5)
    twice_in_flight = sum(runs.values()) - len(runs)
    print(f"\ncluster failover ({how}, worker on the {worker_on}): {len(calls)} calls, "
          f"{twice_in_flight} ran twice (not acknowledged before the stop), the {how} took "
          f"{stopped - stop_at:.1f} s, longest silence {longest:.2f} s, first result after it "
          f"{resumed - stop_at:.2f} s after the stop began; a call's wait: median "
          f"{before[len(before) // 2]:.3f} s before, longest {worst:.2f} s around the stop "
          f"(sent {worst_sent - stop_at:+.2f} s)")
