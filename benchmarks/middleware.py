"""What the Prometheus middleware costs a worker (run by hand; results go in the report).

For each embedded backend (memory, SQLite): a queue is filled with N trivial calls
(``bench.noop``, each with a ``reply_to``, so its result is stored as usual), then one worker
thread (concurrency 1) in this process drains it; throughput is N over the time from the
worker's start to its N-th processed message, and the process's CPU time per task over the
same span (steadier than wall time when other processes share the cores). Rounds alternate
without and with the middleware (ABBA order, so a drift in the machine's load falls on both),
each on a fresh queue; reported: the median of each, the median of the rounds' ratios, and the
CPU cost per task.

First, the hooks alone: the microseconds a task's ``before_task`` + ``after_task`` take through
the pipeline, in one process and in prometheus-client's multiprocess mode (values in mmapped
files, as under ``ivy worker --processes N``; measured in a child process, since that mode is
chosen when prometheus-client is imported). That number is steadier than the throughputs on a
busy machine.

On a shared machine the rounds scatter by +-30%: many short rounds and the median of their
ratios beat a few long ones; the hook cost against a task's time is the steadier estimate, and
is printed last.

    python benchmarks/middleware.py [--rounds 16] [--memory-n 5000] [--sqlite-n 2000]
    python benchmarks/middleware.py --middleware events    # task events instead
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import ivy  # noqa: E402
from ivy.message import Message, new_id  # noqa: E402
from ivy.middleware import Pipeline  # noqa: E402
from ivy.middleware.prometheus import Prometheus  # noqa: E402

QUEUE = "bench"


def hook_cost(n: int = 100_000) -> float:
    """Microseconds per task for before_task + after_task through the pipeline."""
    registry = CollectorRegistry() if "PROMETHEUS_MULTIPROC_DIR" not in os.environ else None
    pipeline = Pipeline([Prometheus(registry)])
    message = Message(id="m", name="bench.noop", args=[0], queue=QUEUE)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            pipeline.before_task(message)
            pipeline.after_task(message, 0, None)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


#: which middleware the rounds turn on: "prometheus" or "events" (``--middleware``)
KIND = "prometheus"


def drain(url: str, n: int, metrics: bool) -> tuple[float, float]:
    """Fill ``url``'s queue with ``n`` calls, then time one worker draining it: tasks/s, and
    CPU microseconds per task. ``metrics``: with the middleware (:data:`KIND`) on."""
    events = metrics and KIND == "events"
    prom = Prometheus(CollectorRegistry()) if metrics and not events else None
    app = ivy.Ivy(url, url, middleware=[prom] if prom else [])
    app.registry.add(bench_tasks.noop)
    try:
        bodies = [Message(id=new_id(), name="bench.noop", args=[i], queue=QUEUE,
                          reply_to="ivy:notify:bench").encode(app.serializer) for i in range(n)]
        for future in app.queue_backend.send_many(QUEUE, bodies):
            future.result(60)
        if prom is not None:  # as `ivy worker --metrics-port` does: depth sampled every 5 s
            prom.bind(app.queue_backend, [QUEUE], registry=app.registry)
        started, cpu = time.perf_counter(), time.process_time()
        worker = app.listen(queue=QUEUE, block=False, concurrency=1, events=events)
        while worker.processed < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        return n / elapsed, (time.process_time() - cpu) / n * 1e6
    finally:
        if prom is not None:
            prom.close()
        app.close()


def bench(name: str, make_url: Callable[[], str], n: int, rounds: int) -> float:
    """Print the rounds and their summary; return the median tasks/s without."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    drain(make_url(), min(n, 1000), False)  # warm-up: imports, caches
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for metrics in order:
            rate, cpu = drain(make_url(), n, metrics)
            rates[metrics].append(rate)
            cpus[metrics].append(cpu)
            print(f"  {name} round {r + 1} {'with' if metrics else 'without'}: {rate:,.0f} "
                  f"tasks/s, {cpu:.1f} us CPU per task", flush=True)
        ratios.append(rates[True][-1] / rates[False][-1])
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    print(f"{name}: without {off:,.0f} tasks/s, with {on:,.0f} tasks/s (medians of {rounds}); "
          f"median ratio with/without {statistics.median(ratios):.3f}; CPU per task "
          f"{cpu_off:.1f} -> {cpu_on:.1f} us ({(cpu_on / cpu_off - 1) * 100:+.1f}%)", flush=True)
    return off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--memory-n", type=int, default=5000)
    parser.add_argument("--sqlite-n", type=int, default=2000)
    parser.add_argument("--middleware", choices=["prometheus", "events"], default="prometheus",
                        help="what the 'with' rounds turn on: the Prometheus middleware, or "
                        "task events (`ivy worker --events`) published through the notifier")
    parser.add_argument("--hooks-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hooks_only:
        print(f"{hook_cost():.2f}")
        return
    global KIND
    KIND = args.middleware
    if KIND == "events":
        for name, make_url, n in (
                ("memory", lambda: f"memory://bench-{uuid.uuid4().hex[:8]}", args.memory_n),
                ("sqlite", lambda: f"sqlite:///{tempfile.mkdtemp()}/e.db", args.sqlite_n)):
            bench(f"{name} events", make_url, n, args.rounds)
        return
    hooks = hook_cost()
    print(f"hooks: {hooks:.2f} us per task in one process", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, __file__, "--hooks-only"], check=True, text=True,
                             capture_output=True, env={**os.environ,
                                                       "PROMETHEUS_MULTIPROC_DIR": tmp})
        print(f"hooks: {float(out.stdout):.2f} us per task in multiprocess mode", flush=True)
    rates = {"memory": bench("memory", lambda: f"memory://bench-{uuid.uuid4().hex[:8]}",
                             args.memory_n, args.rounds)}
    with tempfile.TemporaryDirectory() as tmp:
        rates["sqlite"] = bench("sqlite", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex[:8]}.db",
                                args.sqlite_n, args.rounds)
    for name, rate in rates.items():
        print(f"{name}: the hooks are {hooks * rate / 1e6 * 100:.1f}% of a task's "
              f"{1e6 / rate:.0f} us", flush=True)


if __name__ == "__main__":
    main()
