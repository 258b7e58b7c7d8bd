"""Round-trip benchmark of the embedded backends, with huey as a peer (run by hand; results in
docs/benchmarks.md).

Systems: ivy memory (producer and a one-thread worker in this process), ivy SQLite (one
``ivy worker`` process, concurrency 1) and huey SQLite (``SqliteHuey`` on a file, its consumer
in a process of its own with one worker thread, results in huey's result store), all on files
in one temporary directory. For each: N trivial tasks sent one at a time as fast as possible
with every result awaited: the enqueue rate (calls/s from the first send until the last
``delayed_call`` or huey call returned; for ivy also until ``flush()`` returned, every message
committed) and the end-to-end rate (tasks/s from the first send to the last result). Then
sequential round trips (send one, wait for its result): p50 and p99.

Every worker runs for the whole run, and the systems are measured in turn (throughput in
``--rounds`` rounds, round trips in blocks), in a new seeded order each turn, so that the
machine's drift over seconds weighs on all of them alike (as ``brokers.py`` does).

huey is measured twice on one consumer: waiting with ``Result.get(blocking=True)``, which
polls the store from 50 ms up, as huey's users do; and polling the result store every 0.5 ms,
to show the round trip that huey's SQLite path itself takes.

    python benchmarks/embedded.py [--n 20000] [--latency-n 1000]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402

import ivy  # noqa: E402


@dataclass
class System:
    """One system under test, its worker running."""

    name: str
    send: Callable[[int], Any]
    wait: Callable[[Any], Any]
    flush: Callable[[], None] | None = None
    latency_share: float = 1.0  # of each block of round trips (huey's 50 ms polls are slow)
    sent: int = 0
    enqueue: float = 0.0
    flushed: float = 0.0
    e2e: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # end to end, tasks/s, per round

    def throughput_round(self, n: int) -> None:
        started = time.perf_counter()
        handles = [self.send(i) for i in range(n)]
        enqueued = time.perf_counter()
        if self.flush is not None:
            self.flush()
        flushed = time.perf_counter()
        for i, h in enumerate(handles):
            assert self.wait(h) == i
        self.e2e += time.perf_counter() - started
        self.rates.append(n / (time.perf_counter() - started))
        self.enqueue += enqueued - started
        self.flushed += flushed - started
        self.sent += n

    def latency_round(self, n: int, warm: int = 0) -> None:
        n = max(1, round(n * self.latency_share))
        for i in range(warm + n):
            t = time.perf_counter()
            assert self.wait(self.send(i)) == i
            if i >= warm:
                self.latencies.append((time.perf_counter() - t) * 1000)

    def row(self) -> str:
        lat = sorted(self.latencies)
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
        flushed = f"{self.sent / self.flushed:,.0f}" if self.flush else "-"
        spread = f"{statistics.median(self.rates):,.0f} ({min(self.rates):,.0f}-" \
                 f"{max(self.rates):,.0f})"
        return (f"| {self.name:<26} | {self.sent / self.enqueue:>9,.0f} | {flushed:>9} | "
                f"{self.sent / self.e2e:>8,.0f} | {spread:>23} | {statistics.median(lat):>7.3f} | "
                f"{p99:>7.3f} | {len(lat):>5} |")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)


def ivy_system(name: str, app: ivy.Ivy) -> System:
    app.registry.add(bench_tasks.noop)
    return System(name, lambda i: app.delayed_call(bench_tasks.noop, i),
                  lambda call: call.result(600), lambda: app.flush(600))


def huey_files(tmp: Path, env: dict[str, str]) -> None:
    """Name both huey files before bench_huey_app is first imported (it opens them then)."""
    os.environ["BENCH_HUEY_DB"] = env["BENCH_HUEY_DB"] = str(tmp / "huey.db")
    os.environ["BENCH_HUEY_DEFAULTS_DB"] = env["BENCH_HUEY_DEFAULTS_DB"] = str(
        tmp / "huey-defaults.db")


def start_huey(tmp: Path, env: dict[str, str]) -> tuple[list[System], subprocess.Popen[bytes]]:
    huey_files(tmp, env)
    import bench_huey_app

    # one worker thread, as ivy's worker has; polls from 1 ms (huey's default: 100 ms) up to
    # 50 ms when idle, so that a round trip does not wait for the consumer's poll
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "bench_huey_app.huey", "-w", "1",
         "-k", "thread", "-d", "0.001", "-m", "0.05", "-q"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = bench_huey_app.huey.storage

    def poll(result: Any) -> Any:
        deadline = time.monotonic() + 600
        while not storage.has_data_for_key(result.id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"huey result {result.id}")
            time.sleep(0.0005)
        return result.get()

    return [System("huey SQLite", bench_huey_app.noop,
                   lambda r: r.get(blocking=True, timeout=600), latency_share=0.2),
            System("huey SQLite (0.5 ms poll)", bench_huey_app.noop, poll)], consumer


def start_huey_defaults(tmp: Path,
                        env: dict[str, str]) -> tuple[System, subprocess.Popen[bytes]]:
    """huey as it comes: ``synchronous=FULL``, its consumer's default polling (from 0.1 s up
    to 10 s when idle), results awaited with ``Result.get(blocking=True)``."""
    huey_files(tmp, env)
    import bench_huey_app

    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "bench_huey_app.huey_defaults", "-w",
         "1", "-k", "thread", "-q"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return System("huey SQLite (its defaults)", bench_huey_app.noop_defaults,
                  lambda r: r.get(blocking=True, timeout=600), latency_share=0.2), consumer


def run(systems: list[System], n: int, latency_n: int, rounds: int, block: int) -> None:
    order = random.Random(7)
    for s in systems:  # warm-up: workers ready, every lazy import done
        s.latency_round(5)
        s.latencies.clear()
    for _ in range(rounds):
        for s in order.sample(systems, len(systems)):
            s.throughput_round(n // rounds)
    for _ in range(max(1, latency_n // block)):
        for s in order.sample(systems, len(systems)):
            s.latency_round(block, warm=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="calls for throughput")
    parser.add_argument("--latency-n", type=int, default=1000, help="sequential calls")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--system", choices=["memory", "sqlite", "sqlite-limit", "huey"],
                        action="append",
                        help="sqlite-limit: the SQLite worker with --time-limit 30 (what a "
                             "declared hard time limit costs)")
    parser.add_argument("--huey-defaults", action="store_true",
                        help="also huey as it comes (synchronous=FULL, 0.1 s polls), for "
                             "context; the targets are taken against the tuned huey")
    args = parser.parse_args()
    import huey

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, ivy {ivy.__version__}, "
          f"huey {huey.__version__}, load {os.getloadavg()[0]:.2f}; n={args.n} in "
          f"{args.rounds} rounds, sequential n={args.latency_n} in blocks of {args.block}")
    chosen = args.system or ["memory", "sqlite", "huey"]
    systems: list[System] = []
    cleanup: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory(prefix="ivy-embedded-") as tmp:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
        try:
            if "memory" in chosen:
                app = ivy.Ivy("memory://bench", "memory://bench")
                systems.append(ivy_system("ivy memory", app))
                app.listen(queue="bench", block=False, concurrency=1)
                cleanup.append(app.close)
            for key, name, extra in (("sqlite", "ivy SQLite", []),
                                     ("sqlite-limit", "ivy SQLite, time limit",
                                      ["--time-limit", "30"])):
                if key not in chosen:
                    continue
                url = f"sqlite:///{tmp}/{key}.db"
                worker = subprocess.Popen(
                    [sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                     "--queue-url", url, "--notifier-url", url, "--concurrency", "1",
                     "--log-level", "WARNING", *extra], cwd=HERE, env=env)
                app_sqlite = ivy.Ivy(url, url)
                systems.append(ivy_system(name, app_sqlite))
                cleanup.append(app_sqlite.close)
                cleanup.append(functools.partial(_stop, worker))
            if "huey" in chosen:
                huey_systems, consumer = start_huey(Path(tmp), env)
                systems.extend(huey_systems)
                cleanup.append(lambda: (consumer.send_signal(signal.SIGINT), consumer.wait(60)))
            if args.huey_defaults:
                plain, plain_consumer = start_huey_defaults(Path(tmp), env)
                systems.append(plain)
                cleanup.append(lambda: (plain_consumer.send_signal(signal.SIGINT),
                                        plain_consumer.wait(60)))
            run(systems, args.n, args.latency_n, args.rounds, args.block)
        finally:
            for fn in reversed(cleanup):
                fn()
    print(f"| {'system':<26} | {'enqueue/s':>9} | {'+flush/s':>9} | {'tasks/s':>8} | "
          f"{'per round: median (min-max)':>23} | {'p50 ms':>7} | {'p99 ms':>7} | {'calls':>5} |")
    print(f"| {'-' * 26} | {'-' * 8}: | {'-' * 8}: | {'-' * 7}: | {'-' * 22}: | {'-' * 6}: | "
          f"{'-' * 6}: | {'-' * 4}: |")
    for s in systems:
        print(s.row())
    by = {s.name: s for s in systems}
    if "ivy SQLite" in by and "huey SQLite" in by:
        a, h = by["ivy SQLite"], by["huey SQLite"]
        print("ivy SQLite / huey SQLite: enqueue "
              f"x{(a.sent / a.enqueue) / (h.sent / h.enqueue):.2f}"
              f" (with flush x{(a.sent / a.flushed) / (h.sent / h.enqueue):.2f}), end-to-end "
              f"x{(a.sent / a.e2e) / (h.sent / h.e2e):.2f}")
    if "ivy SQLite" in by and "huey SQLite (its defaults)" in by:
        a, h = by["ivy SQLite"], by["huey SQLite (its defaults)"]
        print("ivy SQLite / huey SQLite at its defaults: enqueue "
              f"x{(a.sent / a.enqueue) / (h.sent / h.enqueue):.2f}, end-to-end "
              f"x{(a.sent / a.e2e) / (h.sent / h.e2e):.2f}")
    if "ivy SQLite" in by and "ivy SQLite, time limit" in by:
        a, t = by["ivy SQLite"], by["ivy SQLite, time limit"]
        print("ivy SQLite with a time limit / without: end-to-end x"
              f"{(t.sent / t.e2e) / (a.sent / a.e2e):.3f} (totals), x"
              f"{statistics.median(t.rates) / statistics.median(a.rates):.3f} (per-round "
              "medians)")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
