"""Bulk sends on the PostgreSQL queue (issue 24's measure: ``delayed_calls`` of 10,000 at
20,000 calls/s or more): the time from the call of ``delayed_calls`` until ``flush()`` returns,
every row committed, on a schema of its own on the machine's server (dropped afterwards). No
worker runs. Prints each round, the median and min-max.

    python benchmarks/postgres_bulk.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                       [--n 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import psycopg

import ivy


def noop(i: int) -> int:
    """The task (never run here)."""
    return i


def one_round(url: str, n: int) -> float:
    """Calls per second of one bulk send of ``n`` calls, flushed."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    app = ivy.Ivy(f"{url}?schema={schema}", "memory://bulk")
    try:
        task = app.register_task(noop, name="bulk.noop", queue="bulk")
        app.delayed_call(task, 0).sent(30)  # warm: schema made, pool open
        started = time.perf_counter()
        app.delayed_calls(task, [[i] for i in range(n)])
        app.flush(60)
        return n / (time.perf_counter() - started)
    finally:
        app.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates = []
    for k in range(args.rounds):
        rates.append(one_round(args.url, args.n))
        print(f"round {k + 1}: {rates[-1]:,.0f} calls/s")
    print(f"delayed_calls of {args.n:,}, flushed: median {statistics.median(rates):,.0f} "
          f"calls/s (min {min(rates):,.0f}, max {max(rates):,.0f}) over {args.rounds} rounds")


if __name__ == "__main__":
    main()
