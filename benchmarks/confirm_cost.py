"""What persistence and publisher confirms cost ivy's round trip on RabbitMQ + Redis, beside
Dramatiq (run by hand; RabbitMQ + Redis as ``brokers.py``).

Sequential round trips (send one call, wait for its result) in blocks of 50 (the first 5 left
out), taken in turn, in a new seeded order each turn, on one ivy worker and one Dramatiq
worker (4 threads each). Four ivy variants, the same code but for two switches: persistence
(ivy's ``persistent`` option) and confirm mode (always on in ivy, so turned off by a patch,
here, for this measurement only):

* ``persistent + confirms``: ivy as it is (``delivery_mode=2``, the publishing channel in
  confirm mode);
* ``transient + confirms``: ``?persistent=false``, messages with ``delivery_mode=1`` (lost if
  RabbitMQ restarts);
* ``persistent, no confirms``: the publishing channel not in confirm mode (a message the
  broker never took is lost silently, as with Dramatiq and Celery);
* ``transient, no confirms``.

Dramatiq publishes persistent messages without confirms. The question this answers: how much
of ivy's round trip against Dramatiq's is the price of knowing that the broker has the
message.

Two floor rows show the least any client can do on the same broker: bare pika + redis-py,
one thread on each side, no hand-off (``floor_worker.py`` consumes, stores and publishes the
result, acks; the producer publishes, then reads the result from its own Redis subscription on
the same thread), persistent messages, with the publishing channel in confirm mode (confirms
read after the result, never waited for) or not.

    BENCH_AMQP_URL=... BENCH_REDIS_URL=... python benchmarks/confirm_cost.py [--turns 20]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

VARIANTS = [("persistent + confirms", True, True), ("transient + confirms", False, True),
            ("persistent, no confirms", True, False), ("transient, no confirms", False, False)]


def ivy_variant(url: str, redis: str, persistent: bool, confirms: bool) -> Any:
    """An Ivy app on ``url`` with ``?persistent=false`` when not ``persistent`` (an option of
    ivy's) and, without ``confirms``, whose publishing channel is not put in confirm mode (not
    an option: patched here; its sends never complete, only round trips are measured)."""
    import bench_tasks

    import ivy
    from ivy._amqp.link import Link
    from ivy.queues import amqp

    if not persistent:
        url = f"{url}{'&' if '?' in url else '?'}persistent=false"
    app = ivy.Ivy(url, redis)
    app.registry.add(bench_tasks.noop)
    backend = app.queue_backend
    assert isinstance(backend, amqp.AMQPQueueBackend)
    if not confirms:
        publisher = backend._publishing

        def link() -> Link:
            with publisher._lock:
                if publisher._link is None:
                    publisher._link = Link(publisher.nodes, "publish",
                                           on_channel=publisher._channel_ready,
                                           on_lost=publisher._channel_lost)
                    publisher._link.start()
                return publisher._link

        publisher.link = link  # type: ignore[method-assign]
    return app


class Floor:
    """A sequential round trip of bare pika + redis-py on ``floor_worker.py``'s queue."""

    def __init__(self, amqp: str, redis_url: str, confirms: bool) -> None:
        import pika
        import redis

        self.connection = pika.BlockingConnection(pika.URLParameters(amqp))
        self.channel = self.connection.channel()
        self.channel.queue_declare("bench_floor", durable=True)
        if confirms:
            # pika's blocking channel waits for each confirm; its asynchronous channel,
            # underneath, takes them as they come (read after each result).
            self.channel._impl.confirm_delivery(ack_nack_callback=lambda frame: None,
                                                callback=lambda frame: None)
            self.connection.process_data_events(0.2)
        self.properties = pika.BasicProperties(delivery_mode=2,
                                               content_type="application/json")
        self.redis = redis.Redis.from_url(redis_url)
        self.subscription = self.redis.pubsub(ignore_subscribe_messages=True)
        self.reply_to = f"floor:{uuid.uuid4().hex}"
        self.subscription.subscribe(self.reply_to)
        self.subscription.get_message(timeout=5)

    def __call__(self, i: int) -> Any:
        self.channel.basic_publish("", "bench_floor", json.dumps(
            {"id": uuid.uuid4().hex, "reply_to": self.reply_to, "args": [i]}).encode(),
            self.properties)
        deadline = time.monotonic() + 30
        while (message := self.subscription.get_message(timeout=30)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the floor worker sent no result within 30 s")
        self.connection.process_data_events(0)
        return json.loads(message["data"])["result"]

    def close(self) -> None:
        self.subscription.close()
        self.redis.close()
        self.connection.close()


def main(turns: int, block: int) -> None:
    import bench_dramatiq_app
    import bench_tasks
    from brokers import AMQP, IVY_AMQP, REDIS, purge, start, stop

    purge("bench", "bench.dead", "bench_dramatiq", "bench_dramatiq.DQ", "bench_dramatiq.XQ",
          "bench_floor")
    floor_worker = start([sys.executable, str(HERE / "floor_worker.py")], ready="ready")
    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                    "--queue-url", IVY_AMQP, "--notifier-url", REDIS, "--concurrency", "4",
                    "--log-level", "WARNING"])
    dramatiq = start(["dramatiq", "bench_dramatiq_app", "--processes", "1", "--threads", "4",
                      "--queues", "bench_dramatiq"])
    apps = {name: ivy_variant(IVY_AMQP, REDIS, persistent, confirms)
            for name, persistent, confirms in VARIANTS}
    systems: dict[str, Callable[[int], Any]] = {
        name: (lambda a: lambda i: a.delayed_call(bench_tasks.noop, i).result(30))(app)
        for name, app in apps.items()}
    floors = {"floor, persistent + confirms": Floor(AMQP, REDIS, confirms=True),
              "floor, persistent, no confirms": Floor(AMQP, REDIS, confirms=False)}
    systems.update(floors)
    systems["Dramatiq"] = lambda i: bench_dramatiq_app.noop.send(i).get_result(
        block=True, timeout=30_000)
    times: dict[str, list[float]] = {name: [] for name in systems}
    order = random.Random(11)
    try:
        for round_trip in systems.values():  # warm-up: connections, imports, worker ready
            for i in range(50):
                round_trip(i)
        for _ in range(turns):
            names = list(systems)
            order.shuffle(names)
            for name in names:
                round_trip = systems[name]
                for i in range(block):
                    started = time.perf_counter()
                    round_trip(i)
                    if i >= 5:
                        times[name].append(time.perf_counter() - started)
    finally:
        stop(worker)
        stop(dramatiq)
        stop(floor_worker, signal.SIGINT)
        for floor in floors.values():
            floor.close()
        for app in apps.values():
            app.close(timeout=1)
    dramatiq_p50 = statistics.median(times["Dramatiq"])
    print(f"{turns} turns of {block} round trips each (first 5 of each block left out)")
    print(f"| {'system':<30} | p50 ms | p90 ms | p50 / Dramatiq |")
    print(f"| {'-' * 30} | -----: | -----: | -------------: |")
    for name, values in times.items():
        p50 = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"| {name:<30} | {p50 * 1000:6.3f} | {p90 * 1000:6.3f} | "
              f"{p50 / dramatiq_p50:14.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    main(args.turns, args.block)
