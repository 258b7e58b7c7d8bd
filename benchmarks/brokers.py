"""Round-trip benchmark on RabbitMQ + Redis: ivy beside a bare pika/redis-py floor, Celery 5 and
Dramatiq, each with one worker process of 4 threads (run by hand; results in
docs/benchmarks.md).

For each: N trivial tasks sent as fast as possible, every result awaited (tasks/s from the first
send to the last result); M sequential round trips (p50/p99 latency); the worker's peak RSS
(VmHWM of its process tree). ivy is measured twice: calls sent one by one with
``delayed_call`` (each returns once RabbitMQ confirmed it), and the same batch sent with
``delayed_calls`` (confirms pipelined).

All the workers run side by side for the whole run, and the measurements take the systems in
turn (throughput in ``--rounds`` rounds, round trips in blocks of ``--block`` calls), so that
the machine's drift over seconds is shared by all of them (see :func:`run`).

    pip install -e '.[bench]'
    python benchmarks/brokers.py [--n 5000] [--latency-n 500] [--chart docs/benchmarks-brokers.png]
"""

from __future__ import annotations

import argparse
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
AMQP = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
IVY_AMQP = os.environ.get("BENCH_IVY_AMQP_URL", AMQP)
REDIS = "redis://127.0.0.1:6379/11"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


@dataclass
class Result:
    name: str
    throughput: float
    p50: float
    p99: float
    rss_mb: float


def tree_peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over a process and its descendants (Linux)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total / 1024


def purge(*queues: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    for q in queues:
        channel.queue_delete(q)
    conn.close()


def start(cmd: list[str], ready: str | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(cmd, cwd=HERE, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    if ready is not None:
        assert process.stdout is not None
        for line in process.stdout:
            if ready.encode() in line:
                break
        else:
            raise RuntimeError(f"{cmd[0]} exited: {process.wait()}")
    threading.Thread(target=lambda: process.stdout and process.stdout.read(),
                     daemon=True).start()
    return process


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class System:
    """One system under test, its worker running: how to send a call and wait for it."""

    name: str
    send: Callable[[int], Any]
    wait: Callable[[Any], Any]
    worker: subprocess.Popen[bytes]
    send_batch: Callable[[int], list[Any]] | None = None
    close: Callable[[], None] = lambda: None
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def throughput_round(self, n: int) -> None:
        started = time.perf_counter()
        handles = self.send_batch(n) if self.send_batch else [self.send(i) for i in range(n)]
        for i, h in enumerate(handles):
            assert self.wait(h) == i
        self.seconds += time.perf_counter() - started
        self.sent += n

    def latency_round(self, n: int, warm: int = 0) -> None:
        for i in range(warm + n):
            t = time.perf_counter()
            assert self.wait(self.send(i)) == i
            if i >= warm:
                self.latencies.append((time.perf_counter() - t) * 1000)

    def result(self) -> Result:
        lat = sorted(self.latencies)
        return Result(self.name, self.sent / self.seconds, statistics.median(lat),
                      lat[max(0, int(len(lat) * 0.99) - 1)], tree_peak_rss_mb(self.worker.pid))


def start_ivy() -> list[System]:
    """ivy twice on one worker: calls one by one (``delayed_call``), and batches
    (``delayed_calls``); their sequential round trips are the same code."""
    import bench_tasks

    import ivy

    purge("bench", "bench.dead")
    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                    "--queue-url", IVY_AMQP, "--notifier-url", REDIS, "--concurrency", "4",
                    "--log-level", "WARNING"])
    app = ivy.Ivy(IVY_AMQP, REDIS)
    app.registry.add(bench_tasks.noop)

    def close() -> None:
        stop(worker)
        app.close()

    def send(i: int) -> Any:
        return app.delayed_call(bench_tasks.noop, i)

    def wait(call: Any) -> Any:
        return call.result(120)

    return [System("ivy (delayed_call)", send, wait, worker),
            System("ivy (delayed_calls)", send, wait, worker,
                   lambda k: app.delayed_calls(bench_tasks.noop, [(i,) for i in range(k)]),
                   close)]


def start_floor() -> list[System]:
    import pika
    import redis

    purge("bench_floor")
    worker = start([sys.executable, str(HERE / "floor_worker.py")], ready="ready")
    channel_name = f"floor:{uuid.uuid4().hex}"
    events: dict[str, threading.Event] = {}
    values: dict[str, Any] = {}
    r = redis.Redis.from_url("redis://127.0.0.1:6379/12")
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
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    channel.queue_declare("bench_floor", durable=True)
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def send(i: int) -> str:
        call_id = uuid.uuid4().hex
        events.setdefault(call_id, threading.Event())
        channel.basic_publish("", "bench_floor", json.dumps(
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
    turn (``rounds`` throughput rounds of n/rounds tasks, then sequential blocks of ``block``
    calls), so that a machine whose speed drifts over seconds (this one does, by 10-20%)
    weighs on every system alike instead of on whichever ran during a slow minute. Each turn
    takes the systems in a new order (seeded, so runs compare), and each block of round
    trips starts with 5 calls left out of the figures: the first calls after another system
    ran are slower (its threads slept, caches went cold), which would otherwise favour a
    system measured right after itself (the two ivy rows share a worker)."""
    order = random.Random(7)
    for s in systems:  # warm-up: worker ready, connections open, imports done
        s.latency_round(20)
        s.latencies.clear()
    for _ in range(rounds):
        for s in order.sample(systems, len(systems)):
            s.throughput_round(n // rounds)
    for _ in range(max(1, latency_n // block)):
        for s in order.sample(systems, len(systems)):
            s.latency_round(block, warm=5)


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, values, title in (
        (axes[0], [r.throughput for r in results], "throughput, tasks/s (higher is better)"),
        (axes[1], [r.p50 for r in results], "sequential round trip p50, ms (lower is better)"),
        (axes[2], [r.rss_mb for r in results], "worker peak RSS, MB (lower is better)"),
    ):
        bars = ax.barh(names, values, color=["#2a7" if "ivy" in n else "#888" for n in names])
        ax.bar_label(bars, fmt="%.0f" if values[0] > 20 else "%.2f", padding=3)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.margins(x=0.25)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle("RabbitMQ broker + Redis results, one worker process with 4 threads, "
                 "trivial tasks", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-n", type=int, default=500)
    parser.add_argument("--chart", type=Path, help="write a PNG chart here")
    parser.add_argument("--only", action="append",
                        choices=["ivy", "floor", "celery", "dramatiq"])
    parser.add_argument("--rounds", type=int, default=5,
                        help="throughput rounds per system, taken in turn (default 5)")
    parser.add_argument("--block", type=int, default=25,
                        help="sequential calls per system per turn (default 25)")
    args = parser.parse_args()
    starters: dict[str, Callable[[], list[System]]] = {
        "ivy": start_ivy,
        "floor": start_floor,
        "celery": start_celery,
        "dramatiq": start_dramatiq,
    }
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; n={args.n} in "
          f"{args.rounds} rounds, sequential n={args.latency_n} in blocks of {args.block}, "
          "systems taken in turn")
    systems: list[System] = []
    try:
        for key in args.only or list(starters):
            systems.extend(starters[key]())
        run(systems, args.n, args.latency_n, args.rounds, args.block)
        results = [s.result() for s in systems]
    finally:
        for s in systems:
            s.close()
    print(f"| {'system':<24} | {'tasks/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'RSS MB':>6} |")
    print(f"| {'-' * 24} | {'-' * 8}: | {'-' * 6}: | {'-' * 6}: | {'-' * 5}: |")
    for r in results:
        print(f"| {r.name:<24} | {r.throughput:>8.0f} | {r.p50:>7.2f} | {r.p99:>7.2f} | "
              f"{r.rss_mb:>6.1f} |", flush=True)
    by = {r.name: r for r in results}
    ivy_runs = [r for r in results if r.name.startswith("ivy")]
    for ivy_r in ivy_runs:
        for other in ("floor (pika + redis-py)", "Dramatiq", "Celery 5"):
            if other in by:
                o = by[other]
                print(f"{ivy_r.name} / {other}: throughput x{ivy_r.throughput / o.throughput:.2f}, "
                      f"p50 x{ivy_r.p50 / o.p50:.2f}")
    if args.chart:
        chart(results, args.chart)
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
