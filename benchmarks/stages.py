"""Where a sequential round trip on RabbitMQ + Redis spends its time (run by hand).

Sends M calls one after another and timestamps each stage, in the producer and in the worker
(``time.perf_counter`` is the system's monotonic clock on Linux, so the two processes' stamps
compare): the producer publishes; the worker's pika delivers, an executor takes the delivery,
the result store starts and ends, the ack goes out; the confirm and the notification reach the
producer; the caller has its result. Prints the median time of each stage after the call
started, and the median of each step.

    python benchmarks/stages.py [--n 1000] [--transient]

The stamps come from wrapping a few functions of pika, redis-py's notifier and ivy (the worker
runs this file with ``--worker``); they cost a few microseconds each.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

STAGES = ["start", "published", "delivered", "taken", "store", "stored", "acked", "confirmed",
          "returned", "notified", "settled", "result"]


def stamping(stamps: list[tuple[str, float]]) -> Any:
    def stamp(name: str) -> None:
        stamps.append((name, time.perf_counter()))
    return stamp


def wrap(owner: Any, attr: str, before: str | None = None, after: str | None = None,
         stamp: Any = None, when: Any = None) -> None:
    original = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        take = when is None or when(args, kwargs)
        if before and take:
            stamp(before)
        result = original(*args, **kwargs)
        if after and take:
            stamp(after)
        return result

    setattr(owner, attr, wrapper)


def worker_main(out: str, argv: list[str]) -> int:
    from pika.channel import Channel

    from ivy.cli import main
    from ivy.notifiers.redis import RedisNotifier
    from ivy.queues import amqp

    stamps: list[tuple[str, float]] = []
    stamp = stamping(stamps)
    wrap(amqp.AMQPDelivery, "__init__", before="delivered", stamp=stamp)
    original_get = amqp.AMQPConsumer.get

    def get(self: Any, timeout: float) -> Any:
        delivery = original_get(self, timeout)
        if delivery is not None:
            stamp("taken")
        return delivery

    amqp.AMQPConsumer.get = get  # type: ignore[method-assign]
    wrap(RedisNotifier, "publish", before="store", after="stored", stamp=stamp,
         when=lambda a, k: k.get("final"))
    wrap(Channel, "basic_ack", before="acked", stamp=stamp)
    atexit.register(lambda: Path(out).write_text(json.dumps(stamps)))
    return main(argv)


def producer_main(n: int, transient: bool) -> None:
    import bench_tasks
    from brokers import IVY_AMQP, REDIS, purge, start, stop
    from pika.channel import Channel

    import ivy
    from ivy.queues import _amqp_publisher

    stamps: list[tuple[str, float]] = []
    recording = [False]
    record = stamping(stamps)

    def stamp(name: str) -> None:
        if recording[0]:
            record(name)

    wrap(Channel, "basic_publish", before="published", stamp=stamp)
    wrap(_amqp_publisher.ConfirmedPublisher, "_confirmed", before="confirmed", stamp=stamp)
    purge("bench", "bench.dead")
    url = f"{IVY_AMQP}{'&' if '?' in IVY_AMQP else '?'}persistent=false" if transient else IVY_AMQP
    out = str(Path(tempfile.mkdtemp()) / "worker-stamps.json")
    worker = start([sys.executable, str(Path(__file__).resolve()), "--worker", out, "worker",
                    "bench_tasks", "--queue", "bench", "--queue-url", url,
                    "--notifier-url", REDIS, "--concurrency", "4", "--log-level", "WARNING"])
    app = ivy.Ivy(url, REDIS)
    app.registry.add(bench_tasks.noop)
    from ivy.results import ResultConsumer

    wrap(ResultConsumer, "dispatch", before="notified", after="settled", stamp=stamp)
    try:
        for i in range(50):
            app.delayed_call(bench_tasks.noop, i).result(10)
        time.sleep(0.5)
        recording[0] = True
        for i in range(n):
            stamp("start")
            call = app.delayed_call(bench_tasks.noop, i)
            stamp("returned")
            call.result(10)
            stamp("result")
        recording[0] = False
    finally:
        stop(worker)
        app.close()
    by: dict[str, list[float]] = defaultdict(list)
    for name, t in stamps:
        by[name].append(t)
    for name, t in json.loads(Path(out).read_text()):
        by[name].append(t)
    Path(out).unlink()
    Path(out).parent.rmdir()
    for name in STAGES:  # the worker's warm-up calls came first: keep its last n
        by[name] = by[name][-n:]
        if len(by[name]) != n:
            raise SystemExit(f"stage {name}: {len(by[name])} stamps for {n} calls")
    print(f"{n} sequential round trips; median ms after the call started, then per step")
    for name in STAGES:
        after = statistics.median(t - s for t, s in zip(by[name], by["start"], strict=True))
        print(f"  {name:<10} {after * 1000:7.3f}")
    for a, b in itertools.pairwise(STAGES):
        step = statistics.median(y - x for x, y in zip(by[a], by[b], strict=True)) * 1000
        print(f"  {a:>10} -> {b:<10} {step:7.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--transient", action="store_true",
                        help="send with ?persistent=false (transient messages, confirms kept)")
    args = parser.parse_args()
    producer_main(args.n, args.transient)
