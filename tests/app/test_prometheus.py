"""Prometheus metrics: the middleware counts exactly what ran, on every backend, and
``/metrics`` serves it over real HTTP: in-process, from ``ivy worker --metrics-port``, and
summed over the children of ``ivy worker --processes N``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from servers import free_port
from workers import WorkerProcess, spawn, stop_worker, wait_listening

import ivy

prometheus_client = pytest.importorskip("prometheus_client",
                                        reason="pip install 'ivy-queue[metrics]'")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from ivy.middleware.prometheus import Prometheus, serve  # noqa: E402
from ivy.worker import PREFETCH_MULTIPLIER  # noqa: E402

Labels = tuple[str, ...]


def scrape(port: int) -> dict[str, dict[Labels, float]]:
    """GET /metrics and parse it: sample name -> {label values in label-name order: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" in sample.labels:  # histogram buckets: the tests read _count and _sum
                continue
            labels = tuple(value for _, value in sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def series(port: int, name: str) -> dict[Labels, float]:
    return scrape(port).get(name, {})


def wait_equal(get: Callable[[], object], expected: object, timeout: float = 20.0,
               message: str = "metrics") -> None:
    """Wait until ``get()`` equals ``expected``; on timeout, fail showing the difference."""
    deadline = time.monotonic() + timeout
    while get() != expected:
        if time.monotonic() > deadline:
            assert get() == expected, f"{message} after {timeout} s"
        time.sleep(0.05)


# -- in process, on every backend ----------------------------------------------------------


def test_every_outcome_is_counted_exactly_once_on_every_backend(urls: tuple[str, str]) -> None:
    # Given a worker and producer in one app, with the middleware on a registry of its own,
    # served over HTTP, sampling the depth of its queue and of one nobody serves
    registry = CollectorRegistry()
    prom = Prometheus(registry)
    server = serve(0, registry=registry)
    app = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05, middleware=[prom])
    gate = threading.Event()
    runs: dict[str, int] = {}

    @app.register_task(name="t.ok", queue="q")
    def ok(n: int) -> int:
        return 2 * n

    @app.register_task(name="t.gate", queue="q")
    def gated() -> bool:
        return gate.wait(30)

    @app.register_task(name="t.flaky", queue="q", max_retries=2)
    def flaky(key: str) -> str:
        runs[key] = runs.get(key, 0) + 1
        if runs[key] == 1:
            raise ConnectionError("first run fails")
        return key

    @app.register_task(name="t.fails", queue="q", max_retries=1)
    def fails() -> None:
        raise ValueError("always")

    @app.register_task(name="t.once", queue="q")
    def once() -> None:
        raise KeyError("no retries")

    port = server.port
    try:
        worker = app.listen(queue="q", block=False)
        prom.bind(app.queue_backend, ["q", "unserved"], registry=app.registry, every=0.2)
        for i in range(2):
            app.send_task("t.ok", [i], queue="unserved")
        # When a task runs, it is counted as running until it ends
        gate_call = app.delayed_call(gated)
        wait_equal(lambda: series(port, "ivy_tasks_running"), {("q",): 1.0},
                   message="one task running")
        gate.set()
        assert gate_call.result(20) is True
        # and calls succeed, succeed after a retry, fail after their retries, fail at once
        assert [app.delayed_call(ok, i).result(20) for i in range(3)] == [0, 2, 4]
        assert app.delayed_call(flaky, "k").result(20) == "k"
        with pytest.raises(ivy.RemoteTaskError, match="always"):
            app.delayed_call(fails).result(20)
        with pytest.raises(ivy.RemoteTaskError, match="no retries"):
            app.delayed_call(once).result(20)
        # and bad input arrives: undecodable bytes, a task nobody registered
        app.queue_backend.publish("q", b"not json")
        app.send_task("t.nobody", [], queue="q")

        # Then each run counts once by its outcome, and each dead letter once more; a name
        # nobody registered is not a label (bad input must not grow the series)
        wait_equal(lambda: series(port, "ivy_tasks_total"), {
            ("successful", "q", "t.gate"): 1.0,
            ("successful", "q", "t.ok"): 3.0,
            ("retried", "q", "t.flaky"): 1.0,
            ("successful", "q", "t.flaky"): 1.0,
            ("retried", "q", "t.fails"): 1.0,
            ("errored", "q", "t.fails"): 1.0,
            ("dead_lettered", "q", "t.fails"): 1.0,
            ("errored", "q", "t.once"): 1.0,
            ("dead_lettered", "", ""): 1.0,
            ("dead_lettered", "q", ""): 1.0,
        }, message="ivy_tasks_total")
        metrics = scrape(port)
        assert metrics["ivy_task_duration_seconds_count"] == {
            ("q", "t.gate"): 1.0, ("q", "t.ok"): 3.0, ("q", "t.flaky"): 2.0,
            ("q", "t.fails"): 2.0, ("q", "t.once"): 1.0}
        durations = metrics["ivy_task_duration_seconds_sum"]
        assert all(v > 0 for v in durations.values())
        assert durations[("q", "t.gate")] > durations[("q", "t.ok")]  # it waited to be let go
        assert metrics["ivy_tasks_running"] == {("q",): 0.0}
        # the producer counted what it published (retries are not publishes)
        assert metrics["ivy_messages_published_total"] == {
            ("unserved", "t.ok"): 2.0, ("q", "t.gate"): 1.0, ("q", "t.ok"): 3.0,
            ("q", "t.flaky"): 1.0, ("q", "t.fails"): 1.0, ("q", "t.once"): 1.0,
            ("q", "t.nobody"): 1.0}
        # and the depths come from the backend: the unserved queue holds its two
        wait_equal(lambda: series(port, "ivy_queue_messages"),
                   {("q",): 0.0, ("unserved",): 2.0}, message="ivy_queue_messages")
        assert worker.running
    finally:
        prom.close()
        server.close()
        app.close()
        gate.set()


def test_metrics_of_one_registry_are_shared_and_a_second_registry_is_separate() -> None:
    # Given two middleware objects on one registry, and one on another
    one, two = CollectorRegistry(), CollectorRegistry()
    a, b, c = Prometheus(one), Prometheus(one), Prometheus(two)
    message = ivy.Message(id="m", name="t.x", args=[], queue="q")
    # When each counts a publish
    for prom in (a, b, c):
        prom.after_publish(message)
    # Then the first registry has both, the second its own
    assert one.get_sample_value("ivy_messages_published_total",
                                {"task": "t.x", "queue": "q"}) == 2.0
    assert two.get_sample_value("ivy_messages_published_total",
                                {"task": "t.x", "queue": "q"}) == 1.0


def test_runs_counted_from_many_threads_at_once_add_up_exactly() -> None:
    # Given one middleware whose hooks run on 8 threads at once (each thread counts into its own
    # tallies, without locks), while another thread scrapes all along
    registry = CollectorRegistry()
    prom = Prometheus(registry, queues=["q"])
    messages = [ivy.Message(id=str(i), name=f"t.{i % 2}", args=[], queue="q") for i in range(2)]
    error = {"type": "ValueError", "message": "x", "traceback": ""}
    start, done = threading.Barrier(9), threading.Event()
    scrapes: list[float] = []

    def runs() -> None:
        start.wait()
        for i in range(5_000):
            message = messages[i % 2]
            prom.before_task(message)
            prom.after_task(message, None, error if i % 5 == 0 else None)

    def scraper() -> None:
        start.wait()
        while not done.is_set():
            scrapes.append(registry.get_sample_value(
                "ivy_task_duration_seconds_count", {"task": "t.0", "queue": "q"}) or 0.0)

    threads = [threading.Thread(target=runs) for _ in range(8)]
    watcher = threading.Thread(target=scraper)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    watcher.join(10)

    # Then every run counted once, by outcome, and scrapes only ever saw the counts grow
    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    for task in ("t.0", "t.1"):
        assert value("ivy_task_duration_seconds_count", task=task, queue="q") == 20_000
        assert value("ivy_task_duration_seconds_bucket", task=task, queue="q",
                     le="+Inf") == 20_000
        # one run in ten fails (i % 5 == 0 falls on each task every tenth run)
        assert value("ivy_tasks_total", task=task, queue="q", outcome="errored") == 4_000
        assert value("ivy_tasks_total", task=task, queue="q", outcome="successful") == 16_000
        assert value("ivy_tasks_total", task=task, queue="q", outcome="retried") is None
    assert value("ivy_tasks_running", queue="q") == 0
    assert scrapes == sorted(scrapes) and len(scrapes) > 1


def inject(url: str, queue: str, body: bytes) -> None:
    """Put ``body`` in ``queue`` of a SQLite file with sqlite3, not through ivy."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10)
    with conn:
        conn.execute("INSERT INTO ivy_messages (queue, body, available_at, created) "
                     "VALUES (?, ?, ?, ?)", (queue, body, time.time(), time.time()))
    conn.close()


def label_values(registry: CollectorRegistry, label: str) -> set[str]:
    return {sample.labels[label] for family in registry.collect() for sample in family.samples
            if label in sample.labels and family.name != "ivy_queue_messages"}


def test_forged_queue_fields_cannot_grow_the_series(sqlite_url: str) -> None:
    # Given a worker consuming queue "q", its middleware bound to it (as ivy worker does)
    registry = CollectorRegistry()
    prom = Prometheus(registry)
    app = ivy.Ivy(sqlite_url, sqlite_url, retry_base_delay=0.01, retry_max_delay=0.05,
                  middleware=[prom])

    @app.register_task(name="t.ok", queue="q")
    def ok(n: int) -> int:
        return n

    @app.register_task(name="t.fails", queue="q")
    def fails(n: int) -> None:
        raise ValueError(n)

    worker = app.listen(queue="q", block=False)
    prom.bind(app.queue_backend, worker.queues, registry=app.registry, every=3600)
    try:
        # When bodies put into "q" by hand each name a queue of their own (tasks that would
        # succeed, be retried and fail, an unknown task, wrong arguments): all dead-lettered
        count = 40
        for i in range(count):
            for name, args, retries in (("t.ok", [i], 0), ("t.fails", [i], 1),
                                        ("t.nobody", [], 0), ("t.ok", ["a", "b"], 0)):
                inject(sqlite_url, "q", json.dumps({
                    "ivy": 1, "id": uuid.uuid4().hex, "name": name, "args": args,
                    "queue": f"forged-{uuid.uuid4().hex}", "max_retries": retries}).encode())
        # and calls of the worker's own queue are made the ordinary way
        assert [app.delayed_call(ok, i).result(20) for i in range(3)] == [0, 1, 2]

        def outcomes() -> dict[str, float]:
            totals: dict[str, float] = {}
            for family in registry.collect():
                for sample in family.samples:
                    if sample.name == "ivy_tasks_total":
                        outcome = sample.labels["outcome"]
                        totals[outcome] = totals.get(outcome, 0.0) + sample.value
            return totals

        # (a body naming another queue than the one that delivered it is dead-lettered
        # before it runs: issue 28, #6)
        wait_equal(outcomes, {"successful": 3.0, "dead_lettered": 4.0 * count},
                   timeout=60, message="every injected body counted")
        # Then the queue label names the consumed queue or none, never a body's word: the
        # series stay as few as the queues and tasks, however many bodies came
        assert label_values(registry, "queue") <= {"q", ""}
        assert registry.get_sample_value(
            "ivy_tasks_total", {"task": "t.ok", "queue": "q", "outcome": "successful"}) == 3.0
        assert label_values(registry, "task") <= {"t.ok", "t.fails", ""}
        series = [sample for family in registry.collect() if family.name == "ivy_tasks"
                  for sample in family.samples if sample.name == "ivy_tasks_total"]
        assert 0 < len(series) <= 2 * 4 * 3  # queues ("q", "") x outcomes x tasks (and "")
    finally:
        prom.close()
        worker.stop()
        app.close()


def test_a_queue_whose_size_fails_loses_its_series(sqlite_url: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    app = ivy.Ivy(sqlite_url, sqlite_url)
    registry = CollectorRegistry()
    prom = Prometheus(registry)
    depth = "ivy_queue_messages"
    try:
        for _ in range(2):
            app.send_task("t.x", [], queue="a")
        app.flush(10)
        # Given a sampled queue holding two messages
        prom.bind(app.queue_backend, ["a"], every=0.05)
        wait_for(lambda: registry.get_sample_value(depth, {"queue": "a"}) == 2.0,
                 message="the depth of a")
        # When its backend cannot tell its size any more
        with caplog.at_level(logging.WARNING, "ivy.middleware.prometheus"):
            app.queue_backend.db.conn().execute("DROP TABLE ivy_messages")  # type: ignore[attr-defined]
            # Then the series goes rather than stay stale, with one warning naming the queue
            wait_for(lambda: registry.get_sample_value(depth, {"queue": "a"}) is None,
                     message="the series to go")
            prom.sample()  # and failing again: still one warning
            prom.sample()
        warnings = [r.getMessage() for r in caplog.records
                    if "cannot read the size of queue 'a'" in r.getMessage()]
        assert len(warnings) == 1, warnings
    finally:
        prom.close()
        app.close()


MULTIPROCESS_SAMPLE = """
import sys, time
import ivy
from prometheus_client import REGISTRY
from ivy.middleware.prometheus import Prometheus

url = sys.argv[1]
app = ivy.Ivy(url, url)
app.send_task("t.x", [], queue="a")
app.flush(10)
prom = Prometheus().bind(app.queue_backend, ["a"], every=3600)  # first sample now
deadline = time.monotonic() + 20
while REGISTRY.get_sample_value("ivy_queue_messages", {"queue": "a"}) != 1.0:
    assert time.monotonic() < deadline, "no sample"
    time.sleep(0.01)
app.queue_backend.db.conn().execute("DROP TABLE ivy_messages")
prom.sample()
prom.close()
app.close()
"""


def test_in_multiprocess_mode_a_failed_sample_is_nan(tmp_path: Path, sqlite_url: str) -> None:
    import math

    from prometheus_client.multiprocess import MultiProcessCollector

    # Given a worker process writing its metrics for a parent to sum (files cannot drop a
    # series, and prometheus-client warns on a removal there: -W error makes that fail)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", MULTIPROCESS_SAMPLE, sqlite_url],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # When its queue's size could be read, then could not: Then the depth is NaN, "unknown"
    depths = [s.value for family in MultiProcessCollector(None, path=str(metrics_dir)).collect()
              for s in family.samples if s.name == "ivy_queue_messages"]
    assert len(depths) == 1 and math.isnan(depths[0]), depths


def test_a_scrape_does_not_wait_for_a_hung_backend() -> None:
    pytest.importorskip("pika")
    from ivy.queues.amqp import AMQPQueueBackend

    # Given a "broker" that accepts connections and never says a word
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    hung = AMQPQueueBackend(f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/%2F")
    registry = CollectorRegistry()
    prom = Prometheus(registry)
    server = serve(0, registry=registry)
    try:
        # When the sampler is stuck asking it for a queue's size
        prom.bind(hung, ["h"], every=0.05)
        wait_for(lambda: accepted, message="the sampler to connect")
        # Then scrapes still answer at once, without that queue
        for _ in range(3):
            started = time.monotonic()
            assert ("h",) not in series(server.port, "ivy_queue_messages")
            assert time.monotonic() - started < 1.0
    finally:
        prom.close(timeout=0.1)
        server.close()
        silent.close()
        for conn in accepted:
            conn.close()


# -- ivy worker --metrics-port, as a user runs it ------------------------------------------

TASKS = '''
import os
import time
from pathlib import Path

import ivy


@ivy.register_task(name="prom.pid", queue="prom")
def pid() -> int:
    return os.getpid()


@ivy.register_task(name="prom.boom", queue="prom", max_retries=1)
def boom() -> None:
    raise RuntimeError("boom")


@ivy.register_task(name="prom.meet", queue="prom")
def meet(folder: str, count: int) -> int:
    """Wait until ``count`` processes ran this at once: every child ran one."""
    path = Path(folder)
    (path / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(path.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the processes did not meet")
        time.sleep(0.01)
    return os.getpid()


@ivy.register_task(name="prom.hold", queue="prom", reserve_time=1.0)
def hold(log: str) -> int:
    """Log this run's pid; the first run holds on (to be killed), later ones return the runs."""
    path = Path(log)
    with path.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    runs = len(path.read_text().split())
    if runs == 1:
        time.sleep(60)
    return runs
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "prom_tasks.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def producer(sqlite_url: str) -> Iterator[ivy.Ivy]:
    app = ivy.Ivy(sqlite_url, sqlite_url)
    yield app
    app.close()


def ivy_worker(folder: Path, url: str, *extra: str) -> WorkerProcess:
    """``ivy worker prom_tasks ...`` in ``folder``; its output (children's too) in ``lines``."""
    return spawn(["worker", "prom_tasks", "--queue-url", url, "--notifier-url", url, *extra],
                 cwd=folder)


def total(port: int, outcome: str, task: str) -> float:
    return series(port, "ivy_tasks_total").get((outcome, "prom", task), 0.0)


def send(app: ivy.Ivy, name: str, *args: object) -> ivy.Call[Any]:
    return app.send_task(name, args, queue="prom")


def test_ivy_worker_serves_its_metrics(folder: Path, sqlite_url: str,
                                       producer: ivy.Ivy) -> None:
    port = free_port()
    worker = ivy_worker(folder, sqlite_url, "--metrics-port", str(port))
    try:
        wait_listening(worker, 1)
        # When calls succeed and one fails through its retry into the dead letters
        calls = [send(producer, "prom.pid") for _ in range(5)]
        assert {c.result(30) for c in calls} == {worker.pid}
        with pytest.raises(ivy.RemoteTaskError, match="boom"):
            producer.send_task("prom.boom", [], queue="prom", max_retries=1).result(30)
        # Then the worker's /metrics says so, and samples the depth of its queue
        wait_equal(lambda: series(port, "ivy_tasks_total"), {
            ("successful", "prom", "prom.pid"): 5.0,
            ("retried", "prom", "prom.boom"): 1.0,
            ("errored", "prom", "prom.boom"): 1.0,
            ("dead_lettered", "prom", "prom.boom"): 1.0})
        # (the depth is a sample taken every few seconds: one taken while the five calls
        # waited says 5 until the next)
        wait_equal(lambda: series(port, "ivy_queue_messages"), {("prom",): 0.0},
                   message="ivy_queue_messages")
        metrics = scrape(port)
        assert metrics["ivy_tasks_running"] == {("prom",): 0.0}
        assert metrics["ivy_task_duration_seconds_count"] == {
            ("prom", "prom.pid"): 5.0, ("prom", "prom.boom"): 2.0}
        stop_worker(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


@pytest.mark.slow
def test_processes_serve_the_sum_of_their_children(folder: Path, sqlite_url: str,
                                                   producer: ivy.Ivy) -> None:
    # Given two worker processes of one thread each, and the parent serving /metrics
    port = free_port()
    sup = ivy_worker(folder, sqlite_url, "--processes", "2", "--concurrency", "1",
                     "--metrics-port", str(port))
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        shared = Path(f"/proc/{children[0]}/environ")
        env = dict(e.split("=", 1) for e in shared.read_text().split("\0") if "=" in e)
        metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        # When each child runs calls (one child can hold at most PREFETCH_MULTIPLIER of the
        # calls that wait for each other, so the other runs some), and ten more
        met = folder / "met"
        met.mkdir()
        meets = [send(producer, "prom.meet", str(met), 2)
                 for _ in range(2 * PREFETCH_MULTIPLIER)]
        assert {c.result(60) for c in meets} == set(children)
        assert {c.result(30) for c in [send(producer, "prom.pid") for _ in range(10)]} <= set(
            children)
        # Then the parent's /metrics is their sum
        wait_equal(lambda: total(port, "successful", "prom.pid"), 10.0)
        assert total(port, "successful", "prom.meet") == 2 * PREFETCH_MULTIPLIER

        # When a child is killed while it runs a task
        log = folder / "runs.log"
        held = send(producer, "prom.hold", str(log))
        wait_for(lambda: log.exists() and log.read_text().strip(), timeout=30,
                 message="the task to start")
        wait_equal(lambda: series(port, "ivy_tasks_running"), {("prom",): 1.0},
                   message="one task running")
        victim = int(log.read_text().split()[0])
        os.kill(victim, signal.SIGKILL)
        # Then its running task stops counting, while its completed calls still count,
        # and the message, run again by another child, counts once
        assert held.result(60) == 2
        wait_equal(lambda: series(port, "ivy_tasks_running"), {("prom",): 0.0},
                   message="no task running")
        wait_equal(lambda: total(port, "successful", "prom.hold"), 1.0)
        assert total(port, "successful", "prom.pid") == 10.0
        assert total(port, "successful", "prom.meet") == 2 * PREFETCH_MULTIPLIER
        # and the child that takes its place adds to the sum
        children = wait_listening(sup, 3)
        replacement = children[2]
        wait_for(lambda: replacement in {c.result(30) for c in
                                         [send(producer, "prom.pid") for _ in range(4)]},
                 timeout=30, message="the replacement to run a call")
        assert total(port, "successful", "prom.pid") > 10.0
        # and the parent removes the directory when it stops
        assert metrics_dir.is_dir()
        stop_worker(sup)
        assert not metrics_dir.exists()
    finally:
        for pid in [sup.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sup.wait(10)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_metrics_port_in_use_is_a_clear_error(folder: Path, sqlite_url: str,
                                                processes: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ivy", "worker", "prom_tasks", "--queue-url", sqlite_url,
             "--notifier-url", sqlite_url, "--processes", processes, "--metrics-port",
             str(port)], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "choose a free port" in done.stderr


def test_without_prometheus_client_the_option_names_the_extra(folder: Path,
                                                              sqlite_url: str) -> None:
    code = ("import sys; sys.modules['prometheus_client'] = None; from ivy.cli import main; "
            f"sys.exit(main(['worker', 'prom_tasks', '--queue-url', {sqlite_url!r}, "
            f"'--metrics-port', '{free_port()}']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--metrics-port needs prometheus-client" in done.stderr
    assert "pip install 'ivy-queue[metrics]'" in done.stderr


def test_the_wait_from_due_time_to_start_is_measured(sqlite_url: str) -> None:
    # Given a worker with the middleware, and two calls: one delayed 0.5 s (its wait counts
    # from its eta), one that waits in the queue while the single thread is busy
    registry = CollectorRegistry()
    app = ivy.Ivy(sqlite_url, sqlite_url, middleware=[Prometheus(registry, queues=["w"])])
    go_on = threading.Event()
    try:
        @app.register_task(name="w.block", queue="w")
        def block() -> None:
            assert go_on.wait(20)

        @app.register_task(name="w.quick", queue="w")
        def quick() -> None:
            pass

        app.listen(queue="w", concurrency=1, block=False)
        first = app.delayed_call(block)
        waiting = app.delayed_call(quick)
        wait_for(lambda: first.status == "running", message="the blocking call to start")
        held = time.monotonic()
        wait_for(lambda: time.monotonic() - held > 0.4, message="the queued call to wait")
        go_on.set()
        waiting.result(10)
        delayed = app.send_task(quick, delay=0.5)
        delayed.result(10)

        def sample(name: str, task: str) -> float:
            value = registry.get_sample_value(name, {"task": task, "queue": "w"})
            return 0.0 if value is None else value

        # Then the queued call's wait is at least the time it was held, and the delayed one's
        # counts from its eta, not from its send (well under its 0.5 s delay)
        assert sample("ivy_task_wait_seconds_count", "w.quick") == 2
        waited = sample("ivy_task_wait_seconds_sum", "w.quick")
        assert 0.4 <= waited < 0.4 + 10
        assert registry.get_sample_value("ivy_task_wait_seconds_bucket",
                                         {"task": "w.quick", "queue": "w", "le": "0.25"}) == 1
    finally:
        go_on.set()
        app.close()


def test_the_oldest_waiting_message_age_is_sampled(sqlite_url: str) -> None:
    registry = CollectorRegistry()
    app = ivy.Ivy(sqlite_url, sqlite_url)
    prom = Prometheus(registry)
    try:
        app.queue_backend.publish("old", b"waiting")
        prom.bind(app.queue_backend, ["old", "empty"], every=0.05)

        def age(queue: str) -> float | None:
            return registry.get_sample_value("ivy_queue_oldest_age_seconds", {"queue": queue})

        wait_for(lambda: (age("old") or 0.0) >= 0.3, message="the age sampled and growing")
        assert age("empty") == 0.0
    finally:
        prom.close()
        app.close()
