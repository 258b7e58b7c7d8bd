"""Chains, groups and chords, runnable with no server.

Run it with ``python examples/workflows.py``: it starts two worker processes, one on the queue
``math`` and one on ``report`` (``ivy worker workflows``, which imports this same file as the
module ``workflows``), sends workflows through the embedded SQLite default (``ivy.db`` in the
working directory), prints their results, stops the workers and exits 0. Steps of one workflow
run on both workers: each step's message goes to its own task's queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import ivy


@ivy.register_task(name="workflows.add", queue="math")
def add(a: int, b: int) -> int:
    return a + b


@ivy.register_task(name="workflows.mul", queue="math")
def mul(a: int, b: int) -> int:
    return a * b


@ivy.register_task(name="workflows.total", queue="report")
def total(values: list[int]) -> int:
    return sum(values)


@ivy.register_task(name="workflows.check", queue="report")
def check(value: int, limit: int) -> int:
    if value > limit:
        raise ValueError(f"{value} is over the limit of {limit}")
    return value


def main() -> int:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here),
                                                        os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, "-m", "ivy", "worker", "workflows", "--queue",
                                 queue, "--concurrency", "4", "--log-level", "ERROR"], env=env)
               for queue in ("math", "report")]
    try:
        # each step's result is the first argument of the next: mul(add(1, 2), 10)
        print("chain:", ivy.delayed_call(ivy.chain(add.s(1, 2), mul.s(10))).result(60))
        # the members run in parallel; the result keeps their order
        print("group:", ivy.delayed_call(ivy.group(add.s(1, 1), add.s(2, 2))).result(60))
        # the callback gets the group's list once every member succeeded
        print("chord:", ivy.delayed_call(
            ivy.chord([add.s(1, 1), add.s(2, 2)], total.s())).result(60))
        # a group inside a chain gets the previous result and passes its list on
        flow = ivy.chain(add.s(1, 2), ivy.group(mul.s(2), mul.s(3)), total.s(), check.s(100))
        print("chain with a group:", ivy.delayed_call(flow).result(60))
        big = ivy.chord([mul.s(n, n) for n in range(1, 201)], total.s())
        print("chord of 200 members:", ivy.delayed_call(big).result(120))
        # a failing step fails the whole workflow, naming the task; later steps never run
        try:
            ivy.delayed_call(ivy.chain(add.s(500, 1), check.s(100), mul.s(2))).result(60)
        except ivy.RemoteTaskError as exc:
            print("failed:", exc)
        return 0
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)


if __name__ == "__main__":
    sys.exit(main())
