"""RQ doing the benchmark's work: its Redis queue, its results in Redis."""

from __future__ import annotations


def noop(i: int) -> int:
    return i
