"""Where a task's time goes on Redis alone: a worker of 4 threads on the Redis Streams queue
and the Redis notifier drains N trivial calls sent by one producer thread (or N calls one
round trip at a time with ``--sequential``), on a redis-server of its own, and this prints the
CPU each process spent per task (worker, producer, redis-server) and the commands Redis ran
per task (``INFO commandstats``). The checkout whose ``ivy`` runs is the one on ``PYTHONPATH``
(default: this one), so that two can be compared.

    python benchmarks/redis_costs.py [--n 10000] [--sequential]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--sequential", action="store_true",
                        help="one call at a time, each result awaited before the next send")
    args = parser.parse_args()
    import bench_tasks
    import redis

    import ivy

    workdir = tempfile.mkdtemp(prefix="ivy-redis-costs-")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", workdir],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    root = os.environ.get("PYTHONPATH", str(HERE.parent))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), root])}
    worker = subprocess.Popen([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue",
                               "bench", "--queue-url", url, "--notifier-url", url,
                               "--concurrency", "4", "--log-level", "WARNING"],
                              env=env, cwd=HERE)  # not a cwd whose ivy/ would come first
    app = ivy.Ivy(url, url)
    app.registry.add(bench_tasks.noop)
    try:
        for i in range(200):  # warm-up: worker listening, connections open
            assert app.delayed_call(bench_tasks.noop, i).result(30) == i
        r.config_resetstat()
        pids = {"worker": worker.pid, "producer": os.getpid(), "redis-server": server.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        if args.sequential:
            for i in range(args.n):
                assert app.delayed_call(bench_tasks.noop, i).result(30) == i
        else:
            calls = [app.delayed_call(bench_tasks.noop, i) for i in range(args.n)]
            for i, call in enumerate(calls):
                assert call.result(120) == i
        wall = time.perf_counter() - started
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        stats = r.info("commandstats")
    finally:
        app.close()
        worker.terminate()
        worker.wait(30)
        r.close()
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    n = args.n
    print(f"ivy from {root}; {n} calls, {'sequential' if args.sequential else 'drained'}: "
          f"{n / wall:,.0f} tasks/s, load {os.getloadavg()[0]:.2f}")
    print("CPU per task (us): " + ", ".join(
        f"{name} {1e6 * (after[name] - before[name]) / n:.0f}" for name in pids))
    total = 0.0
    for name, stat in sorted(stats.items(), key=lambda kv: -kv[1]["calls"]):
        if stat["calls"] / n >= 0.01:
            print(f"  {name.removeprefix('cmdstat_'):<16} {stat['calls'] / n:6.2f} per task, "
                  f"{stat['usec'] / n:6.1f} us per task")
        total += stat["calls"]
    print(f"  commands per task: {total / n:.2f}")


if __name__ == "__main__":
    main()
