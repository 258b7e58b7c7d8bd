"""Results over Redis or over RabbitMQ: ivy on one RabbitMQ queue with the Redis notifier beside
ivy with the AMQP notifier (reply queues; persistent, the default, and ``persistent=false``),
one worker process of 4 threads each (run by hand; results in docs/benchmarks.md).

The measurements are those of benchmarks/brokers.py (its ``System``, ``run`` and ``report``):
N trivial tasks sent one at a time by 1 and by 4 producer threads, every result awaited
(enqueue, enqueue + flush, end-to-end rates), then sequential round trips (p50/p99) and the
worker's peak RSS; both workers run side by side and the systems are taken in turn. Each
system has a queue of its own, so that a worker never answers the other system's calls.

    python benchmarks/notifiers.py [--n 5000] [--latency-n 500] [--rounds 5]

``BENCH_AMQP_URL`` (the queue broker and the AMQP notifier) and ``BENCH_REDIS_URL`` as in
benchmarks/brokers.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import brokers
from brokers import IVY_AMQP, REDIS, System, purge, report, run, start, stop


def start_ivy(name: str, notifier_url: str, queue: str) -> System:
    import bench_tasks

    import ivy

    purge(queue, f"{queue}.dead")
    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", queue,
                    "--queue-url", IVY_AMQP, "--notifier-url", notifier_url,
                    "--concurrency", "4", "--log-level", "WARNING"])
    app = ivy.Ivy(IVY_AMQP, notifier_url)
    app.registry.add(bench_tasks.noop)

    def close() -> None:
        stop(worker)
        app.close()
        purge(queue, f"{queue}.dead")

    def send(i: int) -> Any:
        return app.send_task(bench_tasks.noop, (i,), queue=queue)

    def wait(call: Any) -> Any:
        return call.result(120)

    return System(name, send, wait, worker, close=close, flush=lambda: app.flush(120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=25)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f}; n={args.n} in {args.rounds} rounds, by 1 and by "
          f"{brokers.THREADS} producer threads, sequential n={args.latency_n} in blocks of "
          f"{args.block}, systems taken in turn")
    systems: list[System] = []
    try:
        systems.append(start_ivy("ivy, Redis notifier", REDIS, "bench_redis_results"))
        systems.append(start_ivy("ivy, AMQP notifier", IVY_AMQP, "bench_amqp_results"))
        transient = f"{IVY_AMQP}{'&' if '?' in IVY_AMQP else '?'}persistent=false"
        systems.append(start_ivy("ivy, AMQP transient", transient, "bench_amqp_transient"))
        run(systems, args.n, args.latency_n, args.rounds, args.block)
        results = [s.result() for s in systems]
    finally:
        for s in systems:
            s.close()
    report(results)
    redis_r = results[0]
    for amqp_r in results[1:]:
        parts = []
        for threads in sorted(amqp_r.rates):
            e2e, r_e2e = amqp_r.e2e(threads), redis_r.e2e(threads)
            if e2e and r_e2e:
                parts.append(f"{threads} thread(s): end-to-end x{e2e / r_e2e:.2f}")
        print(f"{amqp_r.name} / Redis notifier: {'; '.join(parts)}; "
              f"p50 x{amqp_r.p50 / redis_r.p50:.2f}, p99 x{amqp_r.p99 / redis_r.p99:.2f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
