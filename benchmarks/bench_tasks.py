"""Trivial tasks for the benchmarks; imported by the benchmark and by its worker processes."""

from __future__ import annotations

import ivy


@ivy.register_task(name="bench.noop", queue="bench")
def noop(i: int) -> int:
    return i
