"""Chaos soak: N calls through RabbitMQ + Redis with two worker processes while workers are
SIGKILLed (and restarted), Redis restarts and RabbitMQ restarts. Prints one summary line:
calls sent, results received, results lost (must be 0), calls whose callback ran more than once
(must be 0), task bodies executed more than once (allowed: delivery is at least once), and the
wall time.

It starts its own redis-server (AOF, fsync always) and its own RabbitMQ node (own
RABBITMQ_NODENAME, ports, config and data folder, 127.0.0.1 only) on free ports, so the
machine's services are never touched. Needs root (RabbitMQ runs as the rabbitmq user).

    python benchmarks/chaos.py [--n 10000] [--kills 5] [--redis-restarts 1] [--rabbit-restarts 1]

tests/test_chaos.py runs a short form.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import PrivateRabbit, PrivateRedis  # noqa: E402

import ivy  # noqa: E402


@dataclass
class Summary:
    sent: int
    received: int
    lost: int
    double_callbacks: int
    executed_more_than_once: int
    kills: int
    redis_restarts: int
    rabbit_restarts: int
    send_retries: int
    wall: float

    def line(self) -> str:
        return (f"chaos: sent={self.sent} received={self.received} lost={self.lost} "
                f"double_callbacks={self.double_callbacks} "
                f"executed_more_than_once={self.executed_more_than_once} "
                f"kills={self.kills} redis_restarts={self.redis_restarts} "
                f"rabbit_restarts={self.rabbit_restarts} send_retries={self.send_retries} "
                f"wall={self.wall:.1f}s")


def run(n: int = 10_000, kills: int = 5, redis_restarts: int = 1, rabbit_restarts: int = 1,
        batch: int = 50, log: Any = print) -> Summary:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ivy-chaos-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)  # the rabbitmq user reaches its folder through this one
        execs = base / "execs"
        execs.mkdir()
        redis = PrivateRedis(base / "redis")
        rabbit = PrivateRabbit(base / "rabbit")
        redis.start()
        rabbit.start()
        log(f"chaos: redis on {redis.port}, RabbitMQ node {rabbit.node} on {rabbit.port}")
        env = {**os.environ, "CHAOS_LOG_DIR": str(execs), "PYTHONPATH": str(HERE)}

        def start_worker() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "ivy", "worker", "chaos_tasks", "--queue", "chaos",
                 "--queue-url", rabbit.url, "--notifier-url", redis.url, "--concurrency", "4",
                 "--log-level", "ERROR"], cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)

        workers = [start_worker(), start_worker()]
        app = ivy.Ivy(rabbit.url, redis.url)
        import chaos_tasks

        app.registry.add(chaos_tasks.work)
        counts: Counter[int] = Counter()
        lock = threading.Lock()

        def callback(i: int) -> Any:
            def done(err: Any, result: Any) -> None:
                with lock:
                    counts[i] += 1

            return done

        faults = ["kill"] * kills + ["redis"] * redis_restarts + ["rabbit"] * rabbit_restarts
        random.shuffle(faults)
        plan = [(int(n * (0.1 + 0.7 * k / max(1, len(faults)))), f)
                for k, f in enumerate(faults)]
        calls: list[ivy.Call[Any]] = []
        send_retries = 0
        done_faults = Counter[str]()
        try:
            i = 0
            while i < n:
                while plan and plan[0][0] <= i:
                    _, fault = plan.pop(0)
                    if fault == "kill":
                        k = random.randrange(len(workers))
                        workers[k].kill()
                        workers[k].wait()
                        workers[k] = start_worker()
                    elif fault == "redis":
                        redis.stop()
                        redis.start()
                    else:
                        rabbit.stop()
                        rabbit.start()
                    done_faults[fault] += 1
                    log(f"chaos: {fault} at call {i}")
                size = min(batch, n - i)
                try:
                    sent = [app.send_task(chaos_tasks.work, (j, uuid.uuid4().hex),
                                          callback=callback(j)) for j in range(i, i + size)]
                except ivy.IvyError as exc:  # the broker is away: a user would retry
                    send_retries += 1
                    log(f"chaos: send failed ({exc}); retrying")
                    time.sleep(0.5)
                    continue
                calls.extend(sent)
                i += size
            deadline = time.monotonic() + 120 + n / 50
            for call in calls:
                try:
                    call.result(max(0.0, deadline - time.monotonic()))
                except ivy.ResultTimeout:
                    break
                except ivy.RemoteTaskError as exc:
                    log(f"chaos: call {call.id} errored: {exc}")
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(60)
                except subprocess.TimeoutExpired:
                    w.kill()
            app.close()
            rabbit.stop()
            redis.stop()
        received = sum(1 for c in calls if c.done())
        runs = Counter(line for f in execs.iterdir() for line in f.read_text().split())
        return Summary(
            sent=len(calls), received=received, lost=len(calls) - received,
            double_callbacks=sum(1 for c in counts.values() if c > 1),
            executed_more_than_once=sum(1 for c in runs.values() if c > 1),
            kills=done_faults["kill"], redis_restarts=done_faults["redis"],
            rabbit_restarts=done_faults["rabbit"], send_retries=send_retries,
            wall=time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--rabbit-restarts", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="print the summary line only")
    args = parser.parse_args()
    why = PrivateRabbit.available()
    if why is not None:
        sys.exit(f"chaos: cannot run: {why}")
    summary = run(args.n, args.kills, args.redis_restarts, args.rabbit_restarts,
                  log=(lambda *a: None) if args.quiet else print)
    print(summary.line())
    sys.exit(0 if summary.lost == 0 and summary.double_callbacks == 0 else 1)


if __name__ == "__main__":
    main()
