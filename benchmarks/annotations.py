"""What decoding by annotations costs, end to end on the memory backend (run by hand; the
figures go in the report). Issue 25's measure: under 10% of the memory backend's rate.

Each round sends N calls of one task through an app on a fresh memory backend, a worker of
the same app (one thread) runs them, and the producer waits for every result: calls per
second from the first send to the last result. The task has five annotated parameters
(``datetime``, ``date``, ``UUID``, ``Decimal``, an ``Enum``) and returns a ``datetime``: the
producer encodes the five at send, the worker decodes them and encodes the result, the
producer decodes it. Its twin is the same function unannotated, sent the same values in their
JSON forms (strings), which it returns as they are. Rounds alternate the two (ABBA order, so
that a drift in the machine's load falls on both); printed: each round, then the median and
min-max of each and the median of the rounds' ratios.

On a shared machine rounds scatter by 10-30%: compare medians, and the ratio of rounds run
next to each other. The load average is printed before and after, and whether orjson writes
the datetimes (it does when installed: ``ivy.annotations.scalars``).

    python benchmarks/annotations.py [--calls 5000] [--rounds 10] [--phases]

``--phases`` sends every call of a round before the worker starts: the same work, timed with
the producer's and the worker's sides one after the other instead of interleaved on one GIL,
where a slower producer changes how often the worker is woken (docs/benchmarks.md).

Instructions instead of time (which other load does not move): ``--once plain`` or ``--once
annotated`` runs one round alone, to count under valgrind at two sizes; the difference over
the difference in calls is a call's count, start-up left out:

    valgrind --tool=cachegrind --cache-sim=no python benchmarks/annotations.py --once plain \
        --calls 500    # then --calls 2500, and the same with annotated
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import os
import statistics
import time
import uuid
from decimal import Decimal
from typing import Any

import ivy
from ivy.annotations import scalars

QUEUE = "bench"
NOW = dt.datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=dt.UTC)
DAY = dt.date(2024, 5, 1)
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def typed(when: dt.datetime, day: dt.date, uid: uuid.UUID, amount: Decimal,
          color: Color) -> dt.datetime:
    return when


def untyped(when, day, uid, amount, color):  # type: ignore[no-untyped-def]
    return when


TYPED_ARGS = (NOW, DAY, UID, Decimal("12.50"), Color.BLUE)
PLAIN_ARGS = (NOW.isoformat(), DAY.isoformat(), UID.hex, "12.50", "blue")


def one_round(n: int, annotated: bool, phases: bool = False) -> tuple[float, float]:
    """Calls per second of ``n`` calls sent, run and waited for, and the process's CPU
    microseconds per call (producer, worker and notification threads together). With
    ``phases``, every call is sent before the worker starts: the producer's and the worker's
    work are timed one after the other, not interleaved on one GIL."""
    url = f"memory://bench-{uuid.uuid4().hex[:8]}"
    app = ivy.Ivy(url, url)
    try:
        func: Any = typed if annotated else untyped
        task = app.register_task(func, name="bench.five", queue=QUEUE)
        args = TYPED_ARGS if annotated else PLAIN_ARGS
        worker = app.listen(queue=QUEUE, block=False, concurrency=1)
        first = app.send_task(task, args).result(timeout=30)  # warm: codec compiled, threads up
        assert first == (NOW if annotated else NOW.isoformat()), first
        if phases:
            worker.stop()
        started, cpu = time.perf_counter(), time.process_time()
        calls = [app.send_task(task, args) for _ in range(n)]
        if phases:
            app.listen(queue=QUEUE, block=False, concurrency=1)
        for call in calls:
            call.result(timeout=120)
        return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e6
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--phases", action="store_true",
                        help="send every call of a round before its worker starts (the two "
                             "sides timed one after the other, not sharing the GIL)")
    parser.add_argument("--once", choices=["plain", "annotated"],
                        help="one round of --calls calls, nothing printed (for valgrind)")
    args = parser.parse_args()
    if args.once:
        one_round(args.calls, args.once == "annotated", args.phases)
        return
    print(f"load average {os.getloadavg()[0]:.2f} at the start; datetimes written by "
          f"{'orjson' if scalars._HAS_ORJSON else 'isoformat()'}"
          f"{'; sends first, then the worker (--phases)' if args.phases else ''}", flush=True)
    one_round(min(args.calls, 1000), True)  # warm-up: imports, caches
    one_round(min(args.calls, 1000), False)
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    for r in range(args.rounds):
        for annotated in ((False, True) if r % 2 == 0 else (True, False)):
            rate, cpu = one_round(args.calls, annotated, args.phases)
            rates[annotated].append(rate)
            cpus[annotated].append(cpu)
            print(f"round {r + 1} {'annotated' if annotated else 'plain    '}: {rate:,.0f} "
                  f"calls/s, {cpu:.0f} us CPU per call", flush=True)
        ratios.append(rates[True][-1] / rates[False][-1])
    for annotated, label in ((False, "plain"), (True, "annotated")):
        values = rates[annotated]
        print(f"{label}: median {statistics.median(values):,.0f} calls/s (min {min(values):,.0f}"
              f", max {max(values):,.0f}) over {args.rounds} rounds of {args.calls} calls; CPU "
              f"per call median {statistics.median(cpus[annotated]):.0f} us (min "
              f"{min(cpus[annotated]):.0f}, max {max(cpus[annotated]):.0f})")
    plain, annotated_rate = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"overhead: {(1 - annotated_rate / plain) * 100:+.1f}% of the plain rate (medians); "
          f"median of the rounds' ratios annotated/plain {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"{(1 / annotated_rate - 1 / plain) * 1e6:+.1f} us per call")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
