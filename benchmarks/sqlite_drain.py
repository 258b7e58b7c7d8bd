"""A/B of the SQLite worker alone: N calls queued first, then one ``ivy worker --concurrency 1``
drains them; the rate (tasks/s over the last N - 500) and the worker's CPU time per task, for
each source tree given, alternately, in ``--rounds`` rounds (run by hand; results in
docs/benchmarks.md). CPU per task is the figure to trust on a shared machine.

    python benchmarks/sqlite_drain.py --n 10000 --rounds 6 /work/main .
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

FILL = """
import sys
import ivy, bench_tasks
app = ivy.Ivy(sys.argv[2], sys.argv[2])
app.registry.add(bench_tasks.noop)
calls = [app.delayed_call(bench_tasks.noop, i) for i in range(int(sys.argv[1]))]
app.flush(600)
app.close()
"""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def drain(tree: str, n: int, tmp: str) -> tuple[float, float, float]:
    """One drain: tasks/s, and the worker's user and system CPU microseconds per task."""
    db = os.path.join(tmp, f"drain-{time.monotonic_ns()}.db")
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.path.join(tree, "benchmarks")])}
    # cwd: ``python -m``/``-c`` put the working directory first on sys.path, which would
    # shadow the tree under test with whatever ivy/ lies there
    subprocess.run([sys.executable, "-c", FILL, str(n), url], env=env, check=True, cwd=tmp)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench", "--queue-url",
         url, "--notifier-url", url, "--concurrency", "1", "--log-level", "WARNING"],
        env=env, cwd=tmp)
    conn = sqlite3.connect(db)

    def left() -> int:
        return int(conn.execute("SELECT count(*) FROM ivy_messages").fetchone()[0])

    try:
        while left() > n - 500:  # started and warm
            time.sleep(0.002)
        started, (user, system) = time.perf_counter(), cpu_seconds(worker.pid)
        while left() > 0:
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        user_end, system_end = cpu_seconds(worker.pid)
        finals = conn.execute("SELECT count(*) FROM ivy_notifications WHERE final = 1")
        assert finals.fetchone()[0] == n
    finally:
        worker.terminate()
        worker.wait(60)
        conn.close()
    done = n - 500
    return done / elapsed, (user_end - user) / done * 1e6, (system_end - system) / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("trees", nargs="+", help="source trees (folders holding ivy/)")
    args = parser.parse_args()
    trees = [os.path.abspath(t) for t in args.trees]
    rates: dict[str, list[float]] = {t: [] for t in trees}
    cpus: dict[str, list[float]] = {t: [] for t in trees}
    systems: dict[str, list[float]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="ivy-drain-") as tmp:
        for r in range(args.rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                rate, user, system = drain(tree, args.n, tmp)
                rates[tree].append(rate)
                cpus[tree].append(user + system)
                systems[tree].append(system)
    for tree in trees:
        print(f"{tree}: median {statistics.median(rates[tree]):,.0f} tasks/s "
              f"{[round(x) for x in rates[tree]]}, worker CPU per task median "
              f"{statistics.median(cpus[tree]):.0f} us {[round(x) for x in cpus[tree]]} (system "
              f"{statistics.median(systems[tree]):.0f} us)")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
