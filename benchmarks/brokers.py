"""Round-trip benchmark on RabbitMQ + Redis: ivy beside a bare pika/redis-py floor, Celery 5 and
Dramatiq, each with one worker process of 4 threads (run by hand; results in
docs/benchmarks.md). The Redis-only pairings run beside them with ``--only``: ivy on Redis
Streams with the Redis notifier (``ivy-redis``; ``ivy-redis-limit``: the same with
``--time-limit 30``, in DB 15), and the Redis brokers of Celery
(``celery-redis``), Dramatiq (``dramatiq-redis``), RQ (``rq``: a worker pool of 4
``SimpleWorker`` processes, since an RQ worker runs one job at a time) and arq (``arq``:
``max_jobs=4``, otherwise its defaults, which poll the queue and each result every 0.5 s).

For each: N trivial tasks sent as fast as possible, every result awaited, twice: sent one at a
time by one producer thread, and by 4 producer threads sending N/4 each. Two rates come of it:
the enqueue rate (calls/s from the first send until the last ``delayed_call``, ``send`` or
``delay`` returned) and the end-to-end rate (tasks/s from the first send to the last result).
For ivy, whose ``delayed_call`` returns once the message is handed over, the rate including
``flush()`` (every publisher confirm back) is reported too: the enqueue rate is not "stored".
Then M sequential round trips (p50/p99 latency) and the worker's peak RSS (VmHWM of its process
tree). ivy's one-thread mode has a second row: the same batch sent with ``delayed_calls``; and
a third ivy row sends transient messages (``?persistent=false``) to the same worker: RabbitMQ
confirms them without making them safe on disk first (see ``benchmarks/confirm_cost.py``).

All the workers run side by side for the whole run, and the measurements take the systems in
turn (throughput in ``--rounds`` rounds, round trips in blocks of ``--block`` calls), so that
the machine's drift over seconds is shared by all of them (see :func:`run`).

    pip install -e '.[bench]'
    python benchmarks/brokers.py [--n 5000] [--latency-n 500] [--chart docs/benchmarks-brokers.png]
    python benchmarks/brokers.py --only ivy-redis --only celery-redis --only dramatiq-redis \
        --only rq --only arq

The shared machine's services are used with a vhost and a Redis DB of the benchmark's own:
``BENCH_AMQP_URL`` (default the ``/`` vhost) and ``BENCH_REDIS_URL`` (default DB 13, outside
the tests' DBs 1-12; every system keeps its results there, under keys of its own). ivy's
results of earlier runs are deleted at start: a DB full of them slowed ivy by 25-40% in one
run (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402 - the helpers shared with postgres_peers.py
from _harness import (  # noqa: E402 - start, stop: other benchmarks import them from here
    THREADS,
    Producers,
    stop,
    tree_peak_rss_mb,
)

AMQP = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
IVY_AMQP = os.environ.get("BENCH_IVY_AMQP_URL", AMQP)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
#: ``--only ivy-redis-limit``: the same worker with a hard time limit on every task, in a DB of
#: its own (issue 26: what declaring a limit costs)
REDIS_LIMIT = os.environ.get("BENCH_REDIS_LIMIT_URL", "redis://127.0.0.1:6379/15")
for _var in ("BENCH_FLOOR_REDIS", "BENCH_CELERY_REDIS", "BENCH_DRAMATIQ_REDIS", "BENCH_ARQ_REDIS"):
    os.environ.setdefault(_var, REDIS)  # read by the peers' apps here and in their workers
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


@dataclass
class Rate:
    """Seconds spent over the throughput rounds of one producer mode (1 or 4 threads)."""

    sent: int = 0
    enqueue: float = 0.0  # first send -> the last send returned
    flushed: float = 0.0  # first send -> flush() returned (ivy only)
    e2e: float = 0.0  # first send -> the last result in hand


@dataclass
class Result:
    name: str
    rates: dict[int, Rate]
    p50: float
    p99: float
    rss_mb: float

    def e2e(self, threads: int) -> float | None:
        r = self.rates.get(threads)
        return r.sent / r.e2e if r and r.sent else None

    def enqueue(self, threads: int) -> float | None:
        r = self.rates.get(threads)
        return r.sent / r.enqueue if r and r.sent else None

    def flushed(self, threads: int) -> float | None:
        r = self.rates.get(threads)
        return r.sent / r.flushed if r and r.sent and r.flushed else None


PRODUCERS = Producers(THREADS)


def purge(*queues: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    for q in queues:
        channel.queue_delete(q)
    conn.close()


def start(cmd: list[str], ready: str | None = None) -> subprocess.Popen[bytes]:
    """A worker started with ``ENV`` (see ``_harness.start``)."""
    return _harness.start(cmd, ENV, ready)


@dataclass
class System:
    """One system under test, its worker running: how to send a call and wait for it."""

    name: str
    send: Callable[[int], Any]
    wait: Callable[[Any], Any]
    worker: subprocess.Popen[bytes]
    send_batch: Callable[[int], list[Any]] | None = None
    close: Callable[[], None] = lambda: None
    flush: Callable[[], None] | None = None
    modes: tuple[int, ...] = (1, THREADS)
    rates: dict[int, Rate] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def throughput_round(self, n: int, threads: int) -> None:
        """n calls sent by ``threads`` producer threads (n/threads each, one at a time), then
        every result awaited."""
        send = self.send
        if threads == 1:
            started = time.perf_counter()
            handles = self.send_batch(n) if self.send_batch else [send(i) for i in range(n)]
        else:
            started = time.perf_counter()
            handles = PRODUCERS.send(send, n)
            n = len(handles)
        enqueued = time.perf_counter()
        if self.flush is not None:
            self.flush()
        flushed = time.perf_counter()
        for i, h in enumerate(handles):
            assert self.wait(h) == i
        ended = time.perf_counter()
        rate = self.rates.setdefault(threads, Rate())
        rate.sent += n
        rate.enqueue += enqueued - started
        rate.flushed += (flushed - started) if self.flush is not None else 0.0
        rate.e2e += ended - started

    def latency_round(self, n: int, warm: int = 0) -> None:
        for i in range(warm + n):
            t = time.perf_counter()
            assert self.wait(self.send(i)) == i
            if i >= warm:
                self.latencies.append((time.perf_counter() - t) * 1000)

    def result(self) -> Result:
        lat = sorted(self.latencies)
        return Result(self.name, self.rates, statistics.median(lat),
                      lat[max(0, int(len(lat) * 0.99) - 1)], tree_peak_rss_mb(self.worker.pid))


def start_ivy() -> list[System]:
    """ivy three times on one worker: calls one by one (``delayed_call``), batches
    (``delayed_calls``, one producer thread only), and calls one by one as transient messages
    (``?persistent=false``); the first two rows' sequential round trips are the same
    code. Each round ends with ``flush()``, timed apart."""
    import bench_tasks

    import ivy

    purge("bench", "bench.dead")
    redis_purge("ivy:result:*")  # earlier runs' results slow the DB
    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                    "--queue-url", IVY_AMQP, "--notifier-url", REDIS, "--concurrency", "4",
                    "--log-level", "WARNING"])
    app = ivy.Ivy(IVY_AMQP, REDIS)
    app.registry.add(bench_tasks.noop)
    # the same worker, fed transient messages (?persistent=false): the latency trade
    transient = ivy.Ivy(f"{IVY_AMQP}{'&' if '?' in IVY_AMQP else '?'}persistent=false", REDIS)
    transient.registry.add(bench_tasks.noop)

    def close() -> None:
        stop(worker)
        app.close()
        transient.close()

    def send(i: int) -> Any:
        return app.delayed_call(bench_tasks.noop, i)

    def wait(call: Any) -> Any:
        return call.result(120)

    def flush() -> None:
        app.flush(120)

    return [System("ivy (delayed_call)", send, wait, worker, flush=flush),
            System("ivy (delayed_calls)", send, wait, worker,
                   lambda k: app.delayed_calls(bench_tasks.noop, [(i,) for i in range(k)]),
                   flush=flush, modes=(1,)),
            System("ivy (persistent=false)",
                   lambda i: transient.delayed_call(bench_tasks.noop, i), wait, worker,
                   None, close, flush=lambda: transient.flush(120))]


def redis_purge(*patterns: str, url: str = REDIS) -> None:
    """Delete the keys of a system's earlier runs in the benchmark's Redis DB (or ``url``'s)."""
    import redis

    r = redis.Redis.from_url(url)
    for pattern in patterns:
        keys = list(r.scan_iter(pattern, count=1000))
        for k in range(0, len(keys), 1000):
            r.delete(*keys[k:k + 1000])
    r.close()


def start_ivy_redis(name: str = "ivy (Redis Streams)", url: str = REDIS,
                    *extra: str) -> list[System]:
    """ivy on Redis alone: Redis Streams as the queue, the Redis notifier for results; the
    worker started with ``extra`` options, on the Redis DB of ``url``."""
    import bench_tasks

    import ivy

    redis_purge("ivy:{bench}*", "ivy:result:*", url=url)  # old results slow the DB
    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                    "--queue-url", url, "--notifier-url", url, "--concurrency", "4",
                    "--log-level", "WARNING", *extra])
    app = ivy.Ivy(url, url)
    app.registry.add(bench_tasks.noop)

    def close() -> None:
        stop(worker)
        app.close()

    return [System(name, lambda i: app.delayed_call(bench_tasks.noop, i),
                   lambda call: call.result(120), worker, None, close,
                   flush=lambda: app.flush(120))]


def start_celery_redis() -> list[System]:
    import bench_celery_redis_app

    redis_purge("bench_celery_redis*", "celery-task-meta-*", "_kombu*", "unacked*")
    worker = start(["celery", "-A", "bench_celery_redis_app", "worker", "--pool", "threads",
                    "--concurrency", "4", "-Q", "bench_celery_redis", "--without-gossip",
                    "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"])
    return [System("Celery 5 (Redis)", lambda i: bench_celery_redis_app.noop.delay(i),
                   lambda r: r.get(timeout=120), worker, None, lambda: stop(worker))]


def start_dramatiq_redis() -> list[System]:
    import bench_dramatiq_redis_app

    redis_purge("bench-dramatiq*")
    worker = start(["dramatiq", "bench_dramatiq_redis_app", "--processes", "1", "--threads",
                    "4", "--queues", "bench_dramatiq_redis"])
    return [System("Dramatiq (Redis)", lambda i: bench_dramatiq_redis_app.noop.send(i),
                   lambda m: m.get_result(block=True, timeout=120_000), worker, None,
                   lambda: stop(worker))]


def start_rq() -> list[System]:
    import bench_rq_app
    import redis
    from rq import Queue

    redis_purge("rq:*")
    worker = start(["rq", "worker-pool", "bench_rq", "-n", "4", "-w", "rq.worker.SimpleWorker",
                    "-u", REDIS, "-q"])
    conn = redis.Redis.from_url(REDIS)
    q = Queue("bench_rq", connection=conn)

    def wait(job: Any) -> Any:
        result = job.latest_result(timeout=120)
        return None if result is None else result.return_value

    def close() -> None:
        stop(worker)
        conn.close()

    return [System("RQ", lambda i: q.enqueue(bench_rq_app.noop, i), wait, worker, None, close)]


def start_arq() -> list[System]:
    """arq, asyncio on both sides: the producer's calls run on an event loop thread of its own."""
    import asyncio

    import bench_arq_app
    from arq import create_pool

    redis_purge("arq:*", bench_arq_app.QUEUE + "*")
    worker = start(["arq", "bench_arq_app.WorkerSettings"])
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="arq-loop").start()

    def run_on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    pool = run_on_loop(create_pool(bench_arq_app.WorkerSettings.redis_settings,
                                   default_queue_name=bench_arq_app.QUEUE))

    def close() -> None:
        stop(worker)
        run_on_loop(pool.aclose())
        loop.call_soon_threadsafe(loop.stop)

    return [System("arq", lambda i: run_on_loop(pool.enqueue_job("noop", i)),
                   lambda job: run_on_loop(job.result(timeout=120)), worker, None, close)]


def start_floor() -> list[System]:
    import pika
    import redis

    purge("bench_floor")
    worker = start([sys.executable, str(HERE / "floor_worker.py")], ready="ready")
    channel_name = f"floor:{uuid.uuid4().hex}"
    events: dict[str, threading.Event] = {}
    values: dict[str, Any] = {}
    r = redis.Redis.from_url(REDIS)
    pubsub = r.pubsub()
    pubsub.subscribe(channel_name)
    pubsub.get_message(timeout=5)
    stopping = threading.Event()

    def listen() -> None:
        while not stopping.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                data = json.loads(message["data"])
                values[data["id"]] = data["result"]
                events.setdefault(data["id"], threading.Event()).set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    local = threading.local()  # a BlockingConnection is used by one thread: one per producer
    conns: list[Any] = []

    def channel() -> Any:
        if not hasattr(local, "channel"):
            conn = pika.BlockingConnection(pika.URLParameters(AMQP))
            conns.append(conn)
            local.channel = conn.channel()
            local.channel.queue_declare("bench_floor", durable=True)
            local.channel.confirm_delivery()
        return local.channel

    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def send(i: int) -> str:
        call_id = uuid.uuid4().hex
        events.setdefault(call_id, threading.Event())
        channel().basic_publish("", "bench_floor", json.dumps(
            {"id": call_id, "reply_to": channel_name, "args": [i]}).encode(), props)
        return call_id

    def wait(call_id: str) -> Any:
        events[call_id].wait(120)
        return values.pop(call_id)

    def close() -> None:  # also keeps r alive: a collected client closes its connections
        stopping.set()
        listener.join(2)
        pubsub.close()
        r.close()
        for conn in conns:  # some are other threads' connections: the run is over
            with contextlib.suppress(Exception):
                conn.close()
        stop(worker, signal.SIGINT)

    return [System("floor (pika + redis-py)", send, wait, worker, None, close)]


def start_celery() -> list[System]:
    import bench_celery_app

    purge("bench_celery")
    worker = start(["celery", "-A", "bench_celery_app", "worker", "--pool", "threads",
                    "--concurrency", "4", "-Q", "bench_celery", "--without-gossip",
                    "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"])
    return [System("Celery 5", lambda i: bench_celery_app.noop.delay(i),
                   lambda r: r.get(timeout=120), worker, None, lambda: stop(worker))]


def start_dramatiq() -> list[System]:
    import bench_dramatiq_app

    purge("bench_dramatiq", "bench_dramatiq.DQ", "bench_dramatiq.XQ")
    worker = start(["dramatiq", "bench_dramatiq_app", "--processes", "1", "--threads", "4",
                    "--queues", "bench_dramatiq"])
    return [System("Dramatiq", lambda i: bench_dramatiq_app.noop.send(i),
                   lambda m: m.get_result(block=True, timeout=120_000), worker, None,
                   lambda: stop(worker))]


def run(systems: list[System], n: int, latency_n: int, rounds: int, block: int) -> None:
    """Every system's worker runs from start to end; the measurements go round the systems in
    turn (``rounds`` throughput rounds of n/rounds tasks, each round in both producer modes,
    then sequential blocks of ``block`` calls), so that a machine whose speed drifts over
    seconds (this one does, by 10-20%) weighs on every system alike instead of on whichever
    ran during a slow minute. Each turn takes the systems in a new order (seeded, so runs
    compare), and each block of round trips starts with 5 calls left out of the figures: the
    first calls after another system ran are slower (its threads slept, caches went cold),
    which would otherwise favour a system measured right after itself (the two ivy rows share
    a worker)."""
    order = random.Random(7)
    for s in systems:  # warm-up: worker ready, connections open (one per thread), imports done
        s.latency_round(20)
        s.latencies.clear()
        for threads in s.modes:
            s.throughput_round(40, threads)
        s.rates.clear()
    for _ in range(rounds):
        for threads in (1, THREADS):
            for s in order.sample(systems, len(systems)):
                if threads in s.modes:
                    s.throughput_round(n // rounds, threads)
    for _ in range(max(1, latency_n // block)):
        for s in order.sample(systems, len(systems)):
            s.latency_round(block, warm=5)


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    colors = ["#2a7" if "ivy" in n else "#888" for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    height = 0.38
    ys = list(range(len(names)))
    for ax, metric, title in ((axes[0], Result.e2e, "end-to-end, tasks/s"),
                              (axes[1], Result.enqueue, "enqueue rate, calls/s")):
        for k, (threads, shade) in enumerate(((1, 1.0), (THREADS, 0.55))):
            values = [metric(r, threads) or 0.0 for r in results]
            bars = ax.barh([y + (k - 0.5) * height for y in ys], values, height,
                           color=colors, alpha=shade,
                           label=f"{threads} producer thread{'s' if threads > 1 else ''}")
            ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], padding=3,
                         fontsize=8)
        ax.set_title(f"{title} (higher is better)", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    for ax, values, title in (
        (axes[2], [r.p50 for r in results], "sequential round trip p50, ms (lower is better)"),
        (axes[3], [r.rss_mb for r in results], "worker peak RSS, MB (lower is better)"),
    ):
        bars = ax.barh(ys, values, color=colors)
        ax.bar_label(bars, fmt="%.0f" if values[0] > 20 else "%.2f", padding=3)
        ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_yticks(ys)
        ax.set_yticklabels(names if ax is axes[0] else [])
        ax.invert_yaxis()
        ax.margins(x=0.3)
    fig.suptitle("RabbitMQ broker + Redis results, one worker process with 4 threads, "
                 "trivial tasks; n calls sent one at a time by 1 or 4 producer threads",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fmt(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def report(results: list[Result]) -> None:
    print(f"| {'system':<24} | producers | {'enqueue/s':>9} | {'+flush/s':>9} | "
          f"{'tasks/s':>8} | {'p50 ms':>6} | {'p99 ms':>6} | {'RSS MB':>6} |")
    print(f"| {'-' * 24} | --------: | {'-' * 8}: | {'-' * 8}: | {'-' * 7}: | {'-' * 5}: | "
          f"{'-' * 5}: | {'-' * 5}: |")
    for r in results:
        for threads in sorted(r.rates):
            print(f"| {r.name:<24} | {threads:>9} | {fmt(r.enqueue(threads)):>9} | "
                  f"{fmt(r.flushed(threads)):>9} | {fmt(r.e2e(threads)):>8} | {r.p50:>6.2f} | "
                  f"{r.p99:>6.2f} | {r.rss_mb:>6.1f} |", flush=True)
    by = {r.name: r for r in results}
    for ivy_r in (r for r in results if r.name.startswith("ivy")):
        for other in ("floor (pika + redis-py)", "Dramatiq", "Celery 5", "Dramatiq (Redis)",
                      "Celery 5 (Redis)", "RQ", "arq"):
            if other not in by:
                continue
            o = by[other]
            parts = []
            for threads in sorted(ivy_r.rates):
                e2e, o_e2e = ivy_r.e2e(threads), o.e2e(threads)
                enq, o_enq = ivy_r.enqueue(threads), o.enqueue(threads)
                if e2e and o_e2e and enq and o_enq:
                    parts.append(f"{threads} thread(s): end-to-end x{e2e / o_e2e:.2f}, "
                                 f"enqueue x{enq / o_enq:.2f}")
            print(f"{ivy_r.name} / {other}: {'; '.join(parts)}; p50 x{ivy_r.p50 / o.p50:.2f}, "
                  f"RSS x{ivy_r.rss_mb / o.rss_mb:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-n", type=int, default=500)
    parser.add_argument("--chart", type=Path, help="write a PNG chart here")
    parser.add_argument("--only", action="append",
                        choices=["ivy", "floor", "celery", "dramatiq", "ivy-redis",
                                 "ivy-redis-limit", "celery-redis", "dramatiq-redis", "rq",
                                 "arq"])
    parser.add_argument("--rounds", type=int, default=5,
                        help="throughput rounds per system and mode, taken in turn (default 5)")
    parser.add_argument("--block", type=int, default=25,
                        help="sequential calls per system per turn (default 25)")
    args = parser.parse_args()
    starters: dict[str, Callable[[], list[System]]] = {
        "ivy": start_ivy,
        "floor": start_floor,
        "celery": start_celery,
        "dramatiq": start_dramatiq,
        "ivy-redis": start_ivy_redis,
        "ivy-redis-limit": lambda: start_ivy_redis("ivy (Redis Streams, time limit)",
                                                   REDIS_LIMIT, "--time-limit", "30"),
        "celery-redis": start_celery_redis,
        "dramatiq-redis": start_dramatiq_redis,
        "rq": start_rq,
        "arq": start_arq,
    }
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f}; n={args.n} in {args.rounds} rounds, by 1 and by "
          f"{THREADS} producer threads, sequential n={args.latency_n} in blocks of "
          f"{args.block}, systems taken in turn")
    systems: list[System] = []
    try:
        for key in args.only or ["ivy", "floor", "celery", "dramatiq"]:
            systems.extend(starters[key]())
        run(systems, args.n, args.latency_n, args.rounds, args.block)
        results = [s.result() for s in systems]
    finally:
        for s in systems:
            s.close()
    report(results)
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    if args.chart:
        chart(results, args.chart)
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
