"""Task metrics of one process, counted per thread without locks and summed at scrape time."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

OUTCOMES = ("successful", "errored", "retried", "dead_lettered")
WAIT_HELP = ("Time a call waited from its due time (sent, or its eta) until a worker started it: "
             "a rising value says the workers do not keep up")


class Tally:
    """One thread's counts for one (task, queue): written by that thread only."""

    __slots__ = ("buckets", "dead_lettered", "errored", "retried", "successful", "total",
                 "wait_buckets", "wait_total")

    def __init__(self, buckets: int, wait_buckets: int = 0) -> None:
        self.successful = 0
        self.errored = 0
        self.retried = 0
        self.dead_lettered = 0
        self.total = 0.0
        self.buckets = [0] * buckets
        #: ivy_task_wait_seconds: from a call's due time to its start
        self.wait_total = 0.0
        self.wait_buckets = [0] * wait_buckets


class Series:
    """The metrics of one (task, queue): a :class:`Tally` per thread that counted."""

    __slots__ = ("_lock", "_size", "_wait_size", "name", "queue", "tallies")

    def __init__(self, name: str, queue: str, buckets: int, wait_buckets: int = 0) -> None:
        self.name = name
        self.queue = queue
        self._size = buckets
        self._wait_size = wait_buckets
        #: thread id -> its tally. A thread id reused after its thread ended continues the old
        #: tally: still one writer at a time, and the counts must stay.
        self.tallies: dict[int, Tally] = {}
        self._lock = threading.Lock()

    def tally(self, thread: int) -> Tally:
        found = self.tallies.get(thread)
        if found is None:
            with self._lock:  # the collector copies the dict: never let it change under it
                found = self.tallies[thread] = Tally(self._size, self._wait_size)
        return found


class LocalCollector:
    """``ivy_tasks_total``, ``ivy_task_duration_seconds`` and ``ivy_tasks_running`` of this
    process, from the tallies and the runs in progress."""

    def __init__(self, bounds: Sequence[float], running_help: str,
                 wait_bounds: Sequence[float] = (float("inf"),)) -> None:
        for given in (bounds, wait_bounds):
            if not given or given[-1] != float("inf"):
                raise ValueError(f"bucket bounds {given!r} must end with inf")
        self.bounds = tuple(bounds)
        self.wait_bounds = tuple(wait_bounds)
        self._running_help = running_help
        self._series: dict[tuple[str, str], Series] = {}
        self._lock = threading.Lock()
        #: thread id -> (series, started) of the run it is in: set and popped whole
        self.runs: dict[int, tuple[Series, float]] = {}

    def series(self, name: str, queue: str) -> Series:
        found = self._series.get((name, queue))
        if found is None:
            with self._lock:
                found = self._series.setdefault((name, queue), Series(
                    name, queue, len(self.bounds), len(self.wait_bounds)))
        return found

    def observe(self, tally: Tally, seconds: float) -> None:
        """Count one run of ``seconds`` in ``tally`` (the caller's own thread's)."""
        tally.total += seconds
        tally.buckets[bisect_left(self.bounds, seconds)] += 1

    def observe_wait(self, tally: Tally, seconds: float) -> None:
        """Count one call that waited ``seconds`` from its due time to its start."""
        tally.wait_total += seconds
        tally.wait_buckets[bisect_left(self.wait_bounds, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            every = sorted(self._series.values(), key=lambda s: (s.name, s.queue))
        tasks = CounterMetricFamily("ivy_tasks", "Task runs by outcome (successful, errored, "
                                    "retried) and messages dead-lettered",
                                    labels=["task", "queue", "outcome"])
        duration = HistogramMetricFamily("ivy_task_duration_seconds", "Time a task run took",
                                         labels=["task", "queue"])
        wait = HistogramMetricFamily("ivy_task_wait_seconds", WAIT_HELP,
                                     labels=["task", "queue"])
        ran: set[str] = set()
        for series in every:
            with series._lock:
                tallies = list(series.tallies.values())
            counts = dict.fromkeys(OUTCOMES, 0)
            buckets = [0] * len(self.bounds)
            total = 0.0
            for tally in tallies:
                for outcome in OUTCOMES:
                    counts[outcome] += getattr(tally, outcome)
                for i, n in enumerate(tally.buckets):
                    buckets[i] += n
                total += tally.total
            labels = [series.name, series.queue]
            for outcome in OUTCOMES:
                if counts[outcome]:  # an outcome that never happened has no series
                    tasks.add_metric([*labels, outcome], counts[outcome])
            if any(buckets):
                ran.add(series.queue)
                cumulative, upto = [], 0
                for bound, n in zip(self.bounds, buckets, strict=True):
                    upto += n
                    cumulative.append((floatToGoString(bound), upto))  # type: ignore[no-untyped-call]
                duration.add_metric(labels, cumulative, total)
            waited = [0] * len(self.wait_bounds)
            for tally in tallies:
                for i, n in enumerate(tally.wait_buckets):
                    waited[i] += n
            if any(waited):
                upto, cumulative = 0, []
                for bound, n in zip(self.wait_bounds, waited, strict=True):
                    upto += n
                    cumulative.append((floatToGoString(bound), upto))  # type: ignore[no-untyped-call]
                wait.add_metric(labels, cumulative, sum(t.wait_total for t in tallies))
        running = dict.fromkeys(sorted(ran), 0)
        for series, _ in self.runs.copy().values():
            running[series.queue] = running.get(series.queue, 0) + 1
        gauge = GaugeMetricFamily("ivy_tasks_running", self._running_help, labels=["queue"])
        for queue, count in running.items():
            gauge.add_metric([queue], count)
        yield tasks
        yield duration
        yield wait
        yield gauge
