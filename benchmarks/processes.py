"""CPU-bound tasks on 1 and on 2 worker processes (run by hand; results in docs/benchmarks.md).

A pure-Python loop holds the GIL, so threads in one process run it one at a time; processes
run it on as many cores as there are. N calls go through SQLite to ``ivy worker --processes 1``
(the plain worker) and then to ``--processes 2``, with the same ``--concurrency``; each run
measures from the first send to the last result, once every worker process listens. The bare
ratio is the same loop in one and in two plain Python processes without ivy, right after: the
machine's own scaling at that moment, the ceiling for ivy's.

    python benchmarks/processes.py [--n 200] [--loops 300000] [--concurrency 1] [--runs 1]

This file is also the tasks module the workers import (``ivy worker processes``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ivy

HERE = Path(__file__).resolve().parent


@ivy.register_task(name="bench.spin", queue="cpu")
def spin(loops: int) -> int:
    """Burn CPU in pure Python, holding the GIL throughout."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def run(processes: int, concurrency: int, n: int, loops: int) -> float:
    """Tasks per second for ``n`` calls of ``spin(loops)`` on ``processes`` worker processes."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        worker = subprocess.Popen(
            [sys.executable, "-m", "ivy", "worker", "processes", "--queue", "cpu",
             "--processes", str(processes), "--concurrency", str(concurrency),
             "--queue-url", url, "--notifier-url", url],
            cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)}, stderr=subprocess.PIPE)
        listening: set[str] = set()
        ready = threading.Event()

        def read() -> None:
            assert worker.stderr is not None
            for raw in worker.stderr:
                line = raw.decode(errors="replace")
                if "ERROR" in line or "Traceback" in line:
                    sys.stderr.write(line)
                if m := re.search(r"worker (\S+): listening on", line):
                    listening.add(m.group(1))
                    if len(listening) == processes:
                        ready.set()

        threading.Thread(target=read, daemon=True).start()
        app = ivy.Ivy(url, url)
        try:
            if not ready.wait(60):
                raise SystemExit(f"the worker processes did not listen within 60 s "
                                 f"(exit code {worker.poll()})")
            started = time.perf_counter()
            calls = [app.send_task("bench.spin", [loops], queue="cpu") for _ in range(n)]
            for call in calls:
                call.result(600)
            elapsed = time.perf_counter() - started
            used = {call.worker for call in calls}
            if len(used) != processes:
                print(f"  note: {len(used)} of {processes} worker processes ran tasks")
            return n / elapsed
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            app.close()


def bare(processes: int, loops: int, tasks: int) -> float:
    """Tasks per second of ``processes`` bare Python processes running ``tasks`` spins each,
    no ivy at all: what the machine gives right now (it may be shared), for the ratio's
    ceiling."""
    code = (f"import processes; [processes.spin.func({loops}) for _ in range({tasks})]")
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=HERE,
                              env={**os.environ, "PYTHONPATH": str(HERE)})
             for _ in range(processes)]
    for proc in procs:
        proc.wait()
    return processes * tasks / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="calls per run (default 200)")
    parser.add_argument("--loops", type=int, default=300_000,
                        help="iterations of the task's loop (default 300000)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="threads per worker process (default 1)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the pair of runs")
    args = parser.parse_args()
    t = time.perf_counter()
    spin.func(args.loops)
    task_ms = (time.perf_counter() - t) * 1000
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, ivy {ivy.__version__}; "
          f"one task ~{task_ms:.0f} ms of CPU, n={args.n}, --concurrency {args.concurrency}")
    print(f"{'run':>3} {'1 process':>12} {'2 processes':>12} {'ratio':>7} {'bare ratio':>11}")
    for i in range(args.runs):
        one = run(1, args.concurrency, args.n, args.loops)
        two = run(2, args.concurrency, args.n, args.loops)
        ceiling = bare(2, args.loops, args.n // 4) / bare(1, args.loops, args.n // 4)
        print(f"{i + 1:>3} {one:>8.1f} t/s {two:>8.1f} t/s {two / one:>6.2f}x "
              f"{ceiling:>10.2f}x")


if __name__ == "__main__":
    main()
