"""Pausing and resuming queues (:mod:`ivy.timing.pause`): ``app.pause_queue`` on every pairing
whose notifier keeps a store (memory, SQLite, RabbitMQ + Redis, Redis Streams, PostgreSQL),
``ivy queue pause/resume/status`` as a user runs it (SQLite), and the dashboard's buttons.

"Nothing ran during the pause" is checked over a bounded window: after the worker saw the
pause, and then looked at the store at least twice more (``worker.pauses.polls``), it admitted
nothing and the queue still holds every message."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from common import amqp_notifier_url, wait_for
from dashboard_support import post
from starlette.testclient import TestClient
from workers import producer_app, start_worker, stop_worker

import ivy
from ivy.dashboard.state import Dashboard
from ivy.dashboard.web import create_app
from ivy.timing import pause as pause_module
from ivy.worker import Worker


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process workers look at the paused queues every 0.2 s instead of every second (the
    test of the worker run by the CLI keeps the real period)."""
    monkeypatch.setattr(pause_module, "POLL_PAUSES", 0.2)


@pytest.fixture
def urls(store_urls: tuple[str, str]) -> tuple[str, str]:
    """Pauses are kept in the notifier's store: every pairing but RabbitMQ alone."""
    return store_urls


def register(app: ivy.Ivy, queue: str, seen: list[tuple[str, int, int]]) -> None:
    """``p.add`` on ``queue`` records (queue, result, attempt) in ``seen``."""

    @app.register_task(name=f"p.add.{queue}", queue=queue)
    def add(a: int, b: int) -> int:
        seen.append((queue, a + b, ivy.current().attempt))
        return a + b


def fresh_queue() -> str:
    return f"qp{uuid.uuid4().hex[:8]}"


def two_polls(worker: Worker) -> None:
    """Wait until ``worker`` looked at the paused queues twice more (two poll periods)."""
    start = worker.pauses.polls
    wait_for(lambda: worker.pauses.polls >= start + 2, timeout=10 * pause_module.POLL_PAUSES,
             message="two more looks at the paused queues")


def test_a_paused_queue_takes_sends_and_runs_nothing_until_resumed(app: ivy.Ivy) -> None:
    # Given a worker on a queue
    queue, seen = fresh_queue(), []
    register(app, queue, seen)
    worker = app.listen(queue=queue, block=False)
    try:
        # When the queue is paused
        assert app.pause_queue(queue) is True
        assert app.pause_queue(queue) is False  # paused already
        assert queue in app.paused_queues()
        # Then the worker sees it within about a second
        wait_for(lambda: worker.pauses.holds(queue), timeout=3,
                 message="the worker to see the pause")
        admitted = worker.admitted
        # and sends still succeed, but nothing runs
        calls = [app.delayed_call(f"p.add.{queue}", n, 1) for n in range(3)]
        for call in calls:
            call.sent(10)
        two_polls(worker)
        assert worker.admitted == admitted and seen == []
        assert not any(call.done() for call in calls)
        assert app.queue_backend.size(queue) == 3
        # When it is resumed: the calls run, soon
        assert app.resume_queue(queue) is True
        assert app.resume_queue(queue) is False
        resumed = time.monotonic()
        assert app.wait(calls, timeout=20) == [1, 2, 3]
        assert time.monotonic() - resumed < 5 * pause_module.POLL_PAUSES
        assert queue not in app.paused_queues()
        assert sorted(n for _, n, _ in seen) == [1, 2, 3]
    finally:
        app.resume_queue(queue)


def test_a_worker_of_two_queues_keeps_serving_the_other(app: ivy.Ivy) -> None:
    # Given a worker of two queues, one of them paused
    paused, other, seen = fresh_queue(), fresh_queue(), []
    register(app, paused, seen)
    register(app, other, seen)
    worker = app.listen(queue=[paused, other], block=False)
    app.pause_queue(paused)
    try:
        wait_for(lambda: worker.pauses.holds(paused), timeout=3,
                 message="the worker to see the pause")
        # When calls go to both
        held = [app.delayed_call(f"p.add.{paused}", n, 10) for n in range(2)]
        served = [app.delayed_call(f"p.add.{other}", n, 20) for n in range(3)]
        # Then the other queue's calls run, and the paused queue's wait
        assert app.wait(served, timeout=20) == [20, 21, 22]
        two_polls(worker)
        assert [q for q, _, _ in seen] == [other] * 3
        assert not any(call.done() for call in held)
        assert app.queue_backend.size(paused) == 2
        # until it is resumed
        app.resume_queue(paused)
        assert app.wait(held, timeout=20) == [10, 11]
        assert worker.pauses.paused == frozenset()
    finally:
        app.resume_queue(paused)


def test_the_pause_survives_a_worker_restart(app: ivy.Ivy, urls: tuple[str, str]) -> None:
    # Given a paused queue whose worker stops
    queue, seen = fresh_queue(), []
    register(app, queue, seen)
    first = app.listen(queue=queue, block=False)
    app.pause_queue(queue)
    try:
        wait_for(lambda: first.pauses.holds(queue), timeout=3, message="the pause seen")
        first.stop(10)
        call = app.delayed_call(f"p.add.{queue}", 2, 3)
        call.sent(10)
        # When a new worker of another app on the same backends starts
        with ivy.Ivy(*urls) as other:
            register(other, queue, seen)
            second = other.listen(queue=queue, block=False)
            # Then it knows the queue is paused from its start, and runs nothing
            assert second.pauses.holds(queue)
            two_polls(second)
            assert second.admitted == 0 and seen == []
            assert app.queue_backend.size(queue) == 1
            # until it is resumed
            app.resume_queue(queue)
            assert call.result(20) == 5
            second.stop(10)
    finally:
        app.resume_queue(queue)


def test_prefetched_messages_are_given_back_unstarted(app: ivy.Ivy) -> None:
    # Given a worker of concurrency 1 running a call that waits, with 4 more calls behind it
    # (the consumer prefetches up to 4 on the backends that prefetch)
    queue, seen = fresh_queue(), []
    register(app, queue, seen)
    release = threading.Event()
    started = threading.Event()

    @app.register_task(name=f"p.wait.{queue}", queue=queue)
    def wait() -> str:
        started.set()
        release.wait(60)
        return "done"

    first = app.delayed_call(wait)
    first.sent(10)
    rest = [app.delayed_call(f"p.add.{queue}", n, 0) for n in range(4)]
    for call in rest:
        call.sent(10)
    worker = app.listen(queue=queue, block=False, concurrency=1)
    probe = None
    try:
        assert started.wait(20), "the first call did not start"
        # When the queue is paused
        app.pause_queue(queue)
        wait_for(lambda: worker.pauses.holds(queue), timeout=3, message="the pause seen")
        # Then the 4 waiting calls are back on the queue at once (another consumer gets them,
        # long before their 30 s lease could end), while the first one still runs
        probe = app.queue_backend.consume(queue, prefetch=4, reserve_time=30)
        got: list[Any] = []

        def take() -> bool:
            delivery = probe.get(0.2)
            if delivery is not None:
                got.append(delivery)
            return len(got) >= 4

        wait_for(take, timeout=15, message="the prefetched messages given back")
        assert not first.done() and worker.admitted == 1
        probe.close()  # first: it must not receive them again
        probe = None
        for delivery in got:
            delivery.release()
        # and the running call ends as usual
        release.set()
        assert first.result(20) == "done"
        # When the queue is resumed, they run, each as its first attempt
        app.resume_queue(queue)
        assert app.wait(rest, timeout=20) == [0, 1, 2, 3]
        assert sorted(attempt for _, _, attempt in seen) == [0, 0, 0, 0]
    finally:
        release.set()
        if probe is not None:
            probe.close()
        app.resume_queue(queue)


def test_concurrent_changes_all_hold(app: ivy.Ivy) -> None:
    # Given 6 threads pausing a queue each, at once
    names = [fresh_queue() for _ in range(6)]
    errors: list[BaseException] = []

    def pause(name: str) -> None:
        try:
            app.pause_queue(name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pause, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        # Then every pause is kept (the list is changed by compare-and-set)
        assert errors == []
        assert set(names) <= set(app.paused_queues())
    finally:
        for name in names:
            app.resume_queue(name)
    assert not set(names) & set(app.paused_queues())


@pytest.mark.parametrize("queue", ["", None, 7])
def test_a_queue_name_is_checked(memory_url: str, queue: Any) -> None:
    with ivy.Ivy(memory_url, memory_url) as app, pytest.raises(ValueError, match="queue name"):
        app.pause_queue(queue)


def test_rabbitmq_alone_cannot_pause(amqp_url: str) -> None:
    # Given the RabbitMQ notifier, which keeps no keys
    with ivy.Ivy(amqp_url, amqp_notifier_url(amqp_url)) as app:
        # Then pausing says so, and names the notifiers that can
        with pytest.raises(ivy.ConfigurationError, match=r"keeps no keys.*redis://"):
            app.pause_queue("q")
        with pytest.raises(ivy.ConfigurationError, match="cannot be paused"):
            app.paused_queues()


# -- the command line (SQLite) ---------------------------------------------------------------


def ivy_queue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivy", "queue", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
def test_cli_pauses_resumes_and_shows_a_queue(sqlite_url: str) -> None:
    where = ["--queue-url", sqlite_url, "--notifier-url", sqlite_url]
    app = producer_app(sqlite_url, sqlite_url)
    worker = start_worker(sqlite_url, sqlite_url, "--heartbeat", "0.25")
    try:
        # When the worker's queue is paused from the command line
        out = ivy_queue("pause", "proc", *where)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "paused queue 'proc'"
        assert ivy_queue("pause", "proc", *where).stdout.strip() == (
            "queue 'proc' was paused already")
        # Then the worker says so, and a call sent meanwhile waits
        wait_for(lambda: "queue proc is paused" in "".join(worker.lines), timeout=5,
                 message="the worker to log the pause")
        call = app.delayed_call("proc.factorial", 5)
        call.sent(10)
        beats: set[float] = set()

        def beaten() -> bool:  # 10 heartbeats of 0.25 s: over two looks at the pauses
            beats.update(w["last_seen"] for w in app.workers() if "proc" in w["queues"])
            return len(beats) >= 10

        wait_for(beaten, timeout=20, message="ten heartbeats")
        [beat] = [w for w in app.workers() if "proc" in w["queues"]]
        assert beat["processed"] == 0 and beat["paused"] == ["proc"]
        assert not call.done()
        # and status shows the queue paused, with its message
        out = ivy_queue("status", "proc", *where)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["QUEUE", "STATE", "MESSAGES", "proc", "paused", "1"]
        listed = json.loads(ivy_queue("status", "--json", *where).stdout)
        assert {"queue": "proc", "paused": True, "size": 1} in listed
        # When it is resumed, the call runs
        out = ivy_queue("resume", "proc", *where)
        assert out.returncode == 0 and out.stdout.strip() == "resumed queue 'proc'"
        assert call.result(20) == 120
        wait_for(lambda: app.queue_backend.size("proc") == 0, message="the message acked")
        out = ivy_queue("status", "proc", "--json", *where)
        assert json.loads(out.stdout) == [{"queue": "proc", "paused": False, "size": 0}]
    finally:
        app.close()
        stop_worker(worker)


def test_cli_refuses_a_missing_database(tmp_path: Any) -> None:
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    out = ivy_queue("pause", "proc", "--notifier-url", missing)
    assert out.returncode == 2 and "no SQLite database" in out.stderr
    assert not (tmp_path / "nope.db").exists()


# -- the dashboard -----------------------------------------------------------------------------


@pytest.fixture
def dash(urls: tuple[str, str]) -> Iterator[tuple[str, TestClient]]:
    """A dashboard of a queue of its own (another run's tests may share the Redis database,
    and would see a shared name paused)."""
    queue = fresh_queue()
    view = ivy.Ivy(*urls)
    dashboard = Dashboard(view, view.start_notification_producer(), [queue], refresh=0)
    with TestClient(create_app(dashboard), base_url="http://127.0.0.1") as client:
        yield queue, client
    view.resume_queue(queue)
    view.close()


def test_dashboard_pauses_and_resumes_a_queue(
        app: ivy.Ivy, dash: tuple[str, TestClient]) -> None:
    # Given the overview of a queue, not paused
    queue, client = dash
    page = client.get("/")
    assert page.status_code == 200
    assert 'action="/queues/pause"' in page.text and ">Pause</button>" in page.text
    assert client.get("/api/live").json()["paused"] == []
    # When its Pause button is posted
    done = post(client, "/queues/pause", queue=queue)
    # Then the queue is paused, and the overview says so, with a Resume button
    assert done.status_code == 200 and done.url.path == "/"
    assert queue in app.paused_queues()
    assert 'class="paused">paused</span>' in done.text and ">Resume</button>" in done.text
    live = client.get("/api/live").json()
    assert live["paused"] == [queue] and live["can_pause"] is True
    # When Resume is posted
    post(client, "/queues/resume", queue=queue)
    assert queue not in app.paused_queues()
    assert client.get("/api/live").json()["paused"] == []


def test_dashboard_pause_needs_the_csrf_token_and_a_queue(
        app: ivy.Ivy, dash: tuple[str, TestClient]) -> None:
    queue, client = dash
    client.get("/")
    # A form without the CSRF token is refused, and changes nothing
    assert client.post("/queues/pause", data={"queue": queue}).status_code == 403
    # and one from another origin too
    refused = client.post("/queues/pause", data={"queue": queue},
                          headers={"origin": "http://evil.example"})
    assert refused.status_code == 403
    assert client.get("/queues/pause").status_code == 405  # actions are POSTs only
    assert post(client, "/queues/pause").status_code == 400  # no queue named
    assert queue not in app.paused_queues()


def test_dashboard_without_a_store_shows_no_buttons(memory_url: str, amqp_url: str) -> None:
    # Given a dashboard whose notifier is RabbitMQ alone (no store)
    view = ivy.Ivy(memory_url, amqp_notifier_url(amqp_url))
    dashboard = Dashboard(view, view.start_notification_producer(), ["q"], refresh=0)
    try:
        with TestClient(create_app(dashboard), base_url="http://127.0.0.1") as client:
            # Then the overview shows no state and no button
            page = client.get("/")
            assert page.status_code == 200 and ">Pause</button>" not in page.text
            assert client.get("/api/live").json()["can_pause"] is False
            # and a pause posted anyway says why it failed
            failed = post(client, "/queues/pause", queue="q")
            assert failed.status_code == 502 and "keeps no keys" in failed.text
    finally:
        view.close()
