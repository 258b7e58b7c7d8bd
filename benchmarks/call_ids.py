"""Call ids drawn per call from ``os.urandom`` against ivy's pooled ids, alternating in one
process on one worker (run by hand; RabbitMQ + Redis as ``brokers.py``).

Each turn runs both variants, in alternating order: 100 sequential round trips (the first 5
left out), then 1,000 calls by 1 producer thread and 1,000 by 4 (every result awaited). The
old variant is patched in for its turns by replacing ``ivy.message._ids``. Prints the p50 and
p90 round trip and the median end-to-end rate of each variant.

    BENCH_AMQP_URL=... BENCH_REDIS_URL=... python benchmarks/call_ids.py [--turns 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


class PerCall:
    """What ``new_id`` did before: a system call per id."""

    def take(self) -> str:
        return os.urandom(16).hex()


def main(turns: int) -> None:
    import bench_tasks
    from brokers import IVY_AMQP, REDIS, purge, start, stop

    import ivy
    import ivy.message as message

    pooled = message._ids
    purge("bench", "bench.dead")
    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                    "--queue-url", IVY_AMQP, "--notifier-url", REDIS, "--concurrency", "4",
                    "--log-level", "WARNING"])
    app = ivy.Ivy(IVY_AMQP, REDIS)
    app.registry.add(bench_tasks.noop)
    pool = ThreadPoolExecutor(4)

    def send(i: int) -> Any:
        return app.delayed_call(bench_tasks.noop, i)

    def share(k: int) -> list[Any]:
        return [send(i) for i in range(k * 250, (k + 1) * 250)]

    latencies: dict[str, list[float]] = {"per call": [], "pooled": []}
    rates: dict[tuple[str, int], list[float]] = {
        (v, t): [] for v in latencies for t in (1, 4)}
    try:
        for i in range(100):
            send(i).result(10)
        for turn in range(turns):
            for variant in (("per call", "pooled") if turn % 2 else ("pooled", "per call")):
                message._ids = PerCall() if variant == "per call" else pooled  # type: ignore
                for i in range(105):
                    t = time.perf_counter()
                    assert send(i).result(10) == i
                    if i >= 5:
                        latencies[variant].append((time.perf_counter() - t) * 1000)
                for threads in (1, 4):
                    t = time.perf_counter()
                    calls = ([send(i) for i in range(1000)] if threads == 1 else
                             [c for part in pool.map(share, range(4)) for c in part])
                    for i, call in enumerate(calls):
                        assert call.result(60) == i
                    rates[(variant, threads)].append(1000 / (time.perf_counter() - t))
    finally:
        message._ids = pooled
        stop(worker)
        app.close()
    for variant, lat in latencies.items():
        lat.sort()
        print(f"{variant:<9} p50 {statistics.median(lat):.3f} ms, p90 "
              f"{lat[int(len(lat) * 0.9)]:.3f} ms; end to end 1 thread "
              f"{statistics.median(rates[(variant, 1)]):,.0f}/s, 4 threads "
              f"{statistics.median(rates[(variant, 4)]):,.0f}/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    main(parser.parse_args().turns)
