"""Prometheus metrics: ``ivy.middleware.Prometheus`` (extra ``ivy-queue[metrics]``), in one process
or summed over ``ivy worker --processes N`` (docs/internals/middleware.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("ivy.middleware.Prometheus needs prometheus-client: pip install "
                      "'ivy-queue[metrics]'") from exc

from ivy.errors import ConfigurationError
from ivy.message import Message
from ivy.middleware import Middleware
from ivy.middleware._local_metrics import WAIT_HELP, LocalCollector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ivy.app import Ivy
    from ivy.queues.base import QueueBackend
    from ivy.task import Registry

log = logging.getLogger("ivy.middleware.prometheus")

__all__ = ["MULTIPROC_ENV", "MetricsServer", "MultiProcessMetrics", "Prometheus", "serve",
           "worker_metrics"]

#: seconds between two samples of the queue depth
SAMPLE_EVERY = 5.0
#: ivy_task_wait_seconds: from a call's due time to its start (scaling decisions live here)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 900.0, 3600.0, float("inf"))
#: task durations from 5 ms to 5 min: trivial tasks and batch jobs both fall in a bucket
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, float("inf"))
#: the environment variable prometheus-client's multiprocess mode reads in each process
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUNNING_HELP = "Task runs in progress"


@dataclass
class _Metrics:
    """The five metrics in one registry. In one process, task runs are counted by a
    :class:`LocalCollector` (per-thread tallies summed at scrape time, no lock per run). In
    prometheus-client's multiprocess mode (each process writes its values to files) they are
    its metric classes, whose labelled children are cached here (labels() is a lock and a dict
    look-up: caching keeps the per-task cost to the increments themselves)."""

    depth: Gauge
    published: Counter
    oldest: Gauge
    local: LocalCollector | None = None
    tasks: Counter | None = None
    duration: Histogram | None = None
    wait: Histogram | None = None
    running: Gauge | None = None
    children: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def child(self, metric: Counter | Histogram | Gauge, kind: str, *labels: str) -> Any:
        key = (kind, *labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found

    def series(self, name: str, queue: str) -> _Series:
        """Multiprocess mode: what a run of task ``name`` from ``queue`` touches."""
        key = ("s", name, queue)
        found: _Series | None = self.children.get(key)
        if found is None:
            assert self.running is not None and self.duration is not None
            found = self.children[key] = _Series(
                name, queue, self.child(self.running, "r", queue),
                self.child(self.duration, "d", name, queue))
        return found

    def count(self, name: str, queue: str, outcome: str) -> None:
        if self.local is not None:
            tally = self.local.series(name, queue).tally(threading.get_ident())
            setattr(tally, outcome, getattr(tally, outcome) + 1)
        else:
            assert self.tasks is not None
            self.child(self.tasks, "t", name, queue, outcome).inc()


@dataclass(slots=True)
class _Series:
    name: str
    queue: str
    running: Any
    duration: Any
    #: made on the first success: an outcome that never happened has no series
    successful: Any = None


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = (
    weakref.WeakKeyDictionary())
_by_registry_lock = threading.Lock()


def _metrics(registry: CollectorRegistry) -> _Metrics:
    """The metrics of ``registry``, registered there on first use: several ``Prometheus``
    objects on one registry share them (a second registration would be refused)."""
    with _by_registry_lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _by_registry[registry] = _Metrics(
                depth=Gauge("ivy_queue_messages", "Messages in the queue, as its backend "
                            "counts them, sampled every few seconds", ["queue"],
                            registry=registry, multiprocess_mode="livemostrecent"),
                published=Counter("ivy_messages_published", "Messages handed to the queue "
                                  "backend by producers", ["task", "queue"], registry=registry),
                oldest=Gauge("ivy_queue_oldest_age_seconds", "Seconds the oldest message "
                             "waiting for a worker has waited since it became due, sampled "
                             "with ivy_queue_messages (backends that can tell: memory, SQLite, "
                             "PostgreSQL)", ["queue"], registry=registry,
                             multiprocess_mode="livemostrecent"))
            if os.environ.get(MULTIPROC_ENV):
                found.tasks = Counter("ivy_tasks", "Task runs by outcome (successful, errored, "
                                      "retried) and messages dead-lettered",
                                      ["task", "queue", "outcome"], registry=registry)
                found.duration = Histogram("ivy_task_duration_seconds", "Time a task run took",
                                           ["task", "queue"], buckets=DURATION_BUCKETS,
                                           registry=registry)
                found.running = Gauge("ivy_tasks_running", RUNNING_HELP, ["queue"],
                                      registry=registry, multiprocess_mode="livesum")
                found.wait = Histogram("ivy_task_wait_seconds", WAIT_HELP, ["task", "queue"],
                                       buckets=WAIT_BUCKETS, registry=registry)
            else:
                found.local = LocalCollector(DURATION_BUCKETS, RUNNING_HELP, WAIT_BUCKETS)
                registry.register(found.local)
        return found


class Prometheus(Middleware):
    """Counts task runs, their outcomes and durations, runs in progress and publishes, in
    ``registry`` (default: prometheus-client's global one, which ``ivy worker
    --metrics-port`` serves). A producer in a web application passes the registry its
    ``/metrics`` endpoint serves. Call :meth:`bind` with the worker's queues to sample their
    depths and to label runs with them (``queues`` names them without sampling): task metrics
    label only those queues, so a message naming any other has ``queue=""``."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 queues: Iterable[str] = ()) -> None:
        """Register ivy's metrics in ``registry`` on first use (one registry shares them).

        Args:
            registry: the prometheus-client registry; None: its global one.
            queues: the queue names task metrics may label, without sampling their depths
                (:meth:`bind` adds and samples).
        """
        self.registry = REGISTRY if registry is None else registry
        self._m = _metrics(self.registry)
        #: the values the ``queue`` label of task metrics may take (with ""): the worker's
        #: queues, from ``queues`` and :meth:`bind`, never a body's word
        self._queues: frozenset[str] = frozenset(queues)
        self._bound: list[tuple[QueueBackend, list[str]]] = []
        self._tasks: Registry | None = None
        self._sample_every = SAMPLE_EVERY
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        #: multiprocess mode: thread id -> the run it is in
        self._started: dict[int, tuple[_Series, float]] = {}

    def __repr__(self) -> str:
        queues = [q for _, names in self._bound for q in names]
        return f"<Prometheus queues={queues}>"

    # -- binding to a worker's backend -----------------------------------------------------

    def bind(self, backend: QueueBackend, queues: Iterable[str], *,
             registry: Registry | None = None, every: float = SAMPLE_EVERY) -> Prometheus:
        """Sample the depth of ``queues`` on ``backend`` every ``every`` seconds (first now) in
        a background thread, until :meth:`close`; ``registry`` (the worker's tasks) gives the
        retry limit of Node.js ivy 0.2 messages. ``ivy worker --metrics-port`` binds the
        worker's backend, queues and registry; in code, ``prom.bind(worker.backend,
        worker.queues, registry=app.registry)``. Binding again adds queues.

        Args:
            backend: the queue backend whose queues are sampled.
            queues: the queue names.
            registry: the worker's task registry; None: the one bound before, if any.
            every: seconds between samples.

        Returns:
            This middleware.

        Raises:
            ValueError: ``every`` is not > 0.
        """
        if every <= 0:
            raise ValueError(f"every={every!r}: the sampling interval must be > 0 seconds")
        with self._lock:
            names = list(dict.fromkeys(queues))
            self._bound.append((backend, names))
            self._queues = self._queues.union(names)
            if registry is not None:
                self._tasks = registry
            self._sample_every = min(self._sample_every, every) if self._sampler else every
            if self._sampler is None:
                self._stop.clear()
                self._sampler = threading.Thread(target=self._sample_loop, daemon=True,
                                                 name="ivy-prometheus-sampler")
                self._sampler.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop sampling (the metrics stay). A sample in progress on a hung backend is not
        waited for beyond ``timeout``: the thread is a daemon.

        Args:
            timeout: seconds to wait for a sample in progress.
        """
        with self._lock:
            sampler, self._sampler = self._sampler, None
            self._stop.set()
        if sampler is not None and sampler is not threading.current_thread():
            sampler.join(timeout)

    def _sample_loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._sample_every):
                return

    def sample(self) -> None:
        """Set ``ivy_queue_messages`` for every bound queue now. A queue whose size cannot be
        read loses its series (logged once until it can be read again)."""
        with self._lock:
            bound = list(self._bound)
        for backend, queues in bound:
            for queue in queues:
                if self._stop.is_set():
                    return
                try:
                    size = backend.size(queue)
                except Exception as exc:
                    if queue not in self._failing:
                        self._failing.add(queue)
                        log.warning("prometheus: cannot read the size of queue %r on %s (%s: "
                                    "%s); ivy_queue_messages{queue=\"%s\"} is left out until it "
                                    "can", queue, backend.url, type(exc).__name__, exc, queue)
                    self._remove_depth(queue)
                    continue
                self._failing.discard(queue)
                self._m.depth.labels(queue).set(size)
                with contextlib.suppress(Exception):  # rare once size answered: keep the depth
                    age = backend.oldest_age(queue)
                    if age is not None:
                        self._m.oldest.labels(queue).set(age)

    def _remove_depth(self, queue: str) -> None:
        if os.environ.get(MULTIPROC_ENV):  # the files cannot drop a series: NaN, "unknown"
            self._m.depth.labels(queue).set(float("nan"))
            return
        with contextlib.suppress(KeyError):
            self._m.depth.remove(queue)

    # -- hooks -----------------------------------------------------------------------------

    def _queue(self, message: Message) -> str:
        """The ``queue`` label of a run of ``message``: its queue if it is one of the worker's
        (bound), else "" (the body's queue field alone is anyone's to write)."""
        queue = message.queue
        return queue if queue is not None and queue in self._queues else ""

    def before_task(self, message: Message) -> None:
        # one executor thread runs the task and calls both hooks: its run is kept by thread
        local = self._m.local
        due = max(message.created_ms or 0, message.eta or 0)
        waited = max(time.time() - due / 1000, 0.0) if due else None
        if local is not None:
            thread = threading.get_ident()
            counted = local.series(message.name, self._queue(message))
            local.runs[thread] = (counted, time.perf_counter())
            if waited is not None:
                local.observe_wait(counted.tally(thread), waited)
            return
        series = self._m.series(message.name, self._queue(message))
        series.running.inc()
        if waited is not None and self._m.wait is not None:
            self._m.child(self._m.wait, "w", message.name, self._queue(message)).observe(waited)
        self._started[threading.get_ident()] = (series, time.perf_counter())

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        now = time.perf_counter()
        thread = threading.get_ident()
        local = self._m.local
        if local is not None:
            run = local.runs.pop(thread, None)
            series, started = run if run is not None else (
                local.series(message.name, self._queue(message)), now)
            tally = series.tally(thread)
            local.observe(tally, now - started)
            if error is None:
                tally.successful += 1
            elif not self._retries_follow(message):
                tally.errored += 1
            return
        found = self._started.pop(thread, None)
        mp, began = found if found is not None else (
            self._m.series(message.name, self._queue(message)), now)
        mp.running.dec()
        mp.duration.observe(now - began)
        if error is None:
            if mp.successful is None:
                assert self._m.tasks is not None
                mp.successful = self._m.child(self._m.tasks, "t", mp.name, mp.queue,
                                              "successful")
            mp.successful.inc()
        elif not self._retries_follow(message):
            self._m.count(mp.name, mp.queue, "errored")

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._m.count(message.name, self._queue(message), "retried")

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        if message is None:
            name, queue = "", ""
        else:  # a name nobody registered is not a label: bad input must not grow the series
            unknown = self._tasks is not None and self._tasks.get(message.name) is None
            name, queue = ("" if unknown else message.name), self._queue(message)
        self._m.count(name, queue, "dead_lettered")

    def after_publish(self, message: Message) -> None:
        self._m.child(self._m.published, "p", message.name, message.queue or "").inc()

    def _retries_follow(self, message: Message) -> bool:
        """The worker's rule: a failed run is retried while ``attempt < max_retries``."""
        retries = message.max_retries
        if message.legacy and self._tasks is not None:
            task = self._tasks.get(message.name)
            retries = task.max_retries if task is not None else 0
        return message.attempt < retries


# -- serving /metrics ----------------------------------------------------------------------


class MetricsServer:
    """prometheus-client's HTTP server for ``/metrics`` on a daemon thread; :meth:`close`
    stops it and frees the port."""

    def __init__(self, port: int, host: str, registry: CollectorRegistry) -> None:
        try:
            self._server: WSGIServer
            self._server, self._thread = _start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: "
                                     f"{exc.strerror or exc}; choose a free port") from exc
        self.port = int(self._server.server_address[1])
        self.host = host

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(port: int, host: str = "127.0.0.1",
          registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``registry`` (default: the global one) at ``http://host:port/metrics``."""
    return MetricsServer(port, host, REGISTRY if registry is None else registry)


class MultiProcessMetrics:
    """The parent of several worker processes: a fresh ``PROMETHEUS_MULTIPROC_DIR`` for the
    children (:attr:`env`), their sum served at ``http://host:port/metrics``, and the
    bookkeeping when one exits (:meth:`process_exited`). The children do not bind the port."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.path = tempfile.mkdtemp(prefix="ivy-metrics-")
        try:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=self.path)  # type: ignore[no-untyped-call]
            self.server = MetricsServer(port, host, self.registry)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        #: what the children's environment adds
        self.env = {MULTIPROC_ENV: self.path}

    def __enter__(self) -> MultiProcessMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def process_exited(self, pid: int) -> None:
        """A child exited: drop its gauges (runs in progress, sampled depths); its counters
        and histograms stay in the sum."""
        try:
            mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        except OSError:
            log.exception("prometheus: forgetting the gauges of process %d failed", pid)

    def close(self) -> None:
        """Stop serving and remove the directory."""
        try:
            self.server.close()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)



@contextlib.contextmanager
def worker_metrics(app: Ivy, port: int, host: str, *, http: bool) -> Iterator[Prometheus]:
    """``ivy worker --metrics-port``: add a :class:`Prometheus` to ``app`` and, unless a
    supervisor serves the metrics (``http=False``), serve the global registry on
    ``host:port`` for the block. The caller binds it to the worker it starts."""
    prometheus = Prometheus()
    server = serve(port, host) if http else None
    try:
        app.add_middleware(prometheus)
        yield prometheus
    finally:
        prometheus.close()
        if server is not None:
            server.close()
