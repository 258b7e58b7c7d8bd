"""Round-trip benchmark of the embedded backends (run by hand; results in docs/benchmarks.md).

For each backend: N trivial tasks sent as fast as possible with every result awaited
(throughput from the first send to the last result), then sequential round trips (p50/p99
latency). memory: producer and a worker thread in this process. sqlite: one worker process
(``ivy worker``), producer here.

    python benchmarks/embedded.py [--n 20000] [--latency-n 2000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402

import ivy  # noqa: E402


def measure(app: ivy.Ivy, n: int, latency_n: int) -> dict[str, float]:
    # warm-up: the worker is ready and every lazy import is done
    app.delayed_call("bench.noop", 0).result(60)
    started = time.perf_counter()
    calls = [app.delayed_call("bench.noop", i) for i in range(n)]
    for call in calls:
        call.result(600)
    throughput = n / (time.perf_counter() - started)
    latencies = []
    for i in range(latency_n):
        t = time.perf_counter()
        app.delayed_call("bench.noop", i).result(60)
        latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    return {
        "throughput": throughput,
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
    }


def bench_memory(n: int, latency_n: int) -> dict[str, float]:
    app = ivy.Ivy("memory://bench", "memory://bench")
    app.registry.add(bench_tasks.noop)
    app.listen(queue="bench", block=False, concurrency=1)
    try:
        return measure(app, n, latency_n)
    finally:
        app.close()


def bench_sqlite(n: int, latency_n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        worker = subprocess.Popen(
            [sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
             "--queue-url", url, "--notifier-url", url, "--log-level", "WARNING"],
            cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)})
        app = ivy.Ivy(url, url)
        app.registry.add(bench_tasks.noop)
        try:
            return measure(app, n, latency_n)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="calls for throughput")
    parser.add_argument("--latency-n", type=int, default=2000, help="sequential calls")
    parser.add_argument("--backend", choices=["memory", "sqlite"], action="append")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, ivy {ivy.__version__}")
    print(f"{'backend':<8} {'tasks/s':>10} {'p50 ms':>8} {'p99 ms':>8}   (n={args.n}, "
          f"sequential n={args.latency_n})")
    for name in args.backend or ["memory", "sqlite"]:
        run = bench_memory if name == "memory" else bench_sqlite
        r = run(args.n, args.latency_n)
        print(f"{name:<8} {r['throughput']:>10.0f} {r['p50']:>8.3f} {r['p99']:>8.3f}")


if __name__ == "__main__":
    main()
