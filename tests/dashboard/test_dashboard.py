"""The web dashboard (``ivy dashboard``, :mod:`ivy.dashboard`) over HTTP on memory, SQLite and
RabbitMQ + Redis: the overview and its live data, dead letters (escaped; requeue, requeue
all, purge with a confirmation), failures with tracebacks, call lookup; a broker that is down;
the live stream from a real uvicorn server; the collector. Security is in
test_dashboard_security.py, the browser test in test_dashboard_browser.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from common import ROOT, wait_for
from dashboard_support import XSS, Q, make_dashboard, post, register
from starlette.testclient import TestClient

import ivy
from ivy.dashboard.collector import Collector
from ivy.dashboard.server import GRACEFUL_SHUTDOWN, Server
from ivy.dashboard.state import Dashboard
from ivy.dashboard.web import create_app


@pytest.fixture
def dash(urls: tuple[str, str]) -> Iterator[tuple[Dashboard, TestClient]]:
    """A dashboard on the backends of ``app``, its collector reading events already."""
    view, dashboard = make_dashboard(urls)
    with TestClient(create_app(dashboard), base_url="http://127.0.0.1") as client:
        yield dashboard, client
    view.close()

def test_overview_shows_queues_workers_and_tasks_per_second(
        app: ivy.Ivy, dash: tuple[Dashboard, TestClient]) -> None:
    # Given a worker with events on, which ran three calls and failed one
    dashboard, client = dash
    double, boom = register(app)
    app.listen(queue=Q, block=False, events=True, heartbeat=0.2)
    calls = [app.delayed_call(double, n) for n in range(3)]
    assert app.wait(calls, timeout=20) == [0, 2, 4]
    with pytest.raises(ivy.RemoteTaskError):
        app.delayed_call(boom, "x").result(20)
    # When the live data is read
    def counted() -> dict[str, Any]:
        data: dict[str, Any] = client.get("/api/live").json()
        series = data["series"]
        return data if sum(series["succeeded"]) >= 3 and sum(series["failed"]) >= 1 else {}
    wait_for(counted, timeout=20, message="the events counted")
    data = counted()
    # Then it has the queue, the worker and the per-second counts of the chart
    assert data["queues"] == [{"name": Q, "size": 0, "dead": "0", "error": None}]
    [worker] = [w for w in data["workers"] if Q in w["queues"]]
    assert worker["events"] is True
    assert len(data["series"]["succeeded"]) == dashboard.collector.window
    assert (sum(data["series"]["succeeded"]), sum(data["series"]["failed"])) == (3, 1)
    # and the page shows the queue with a link to its dead letters, and the worker
    page = client.get("/")
    assert page.status_code == 200
    assert f'href="/dead?queue={Q}"' in page.text and worker["name"] in page.text
    assert 'src="/static/dashboard.js"' in page.text
    assert client.get("/static/dashboard.js").status_code == 200


def test_dead_letters_are_escaped_and_requeued_runs(
        app: ivy.Ivy, dash: tuple[Dashboard, TestClient]) -> None:
    # Given a call dead-lettered because no worker knows its task, with a <script> argument
    _, client = dash
    app.listen(queue=Q, block=False)
    call = app.send_task("t.later", [XSS], {"note": "<b>bold</b>"}, queue=Q)
    wait_for(lambda: app.dead_letters(Q), timeout=20, message="the dead letter")
    # When its page is read
    page = client.get(f"/dead?queue={Q}")
    # Then the argument, the task and the reason are shown escaped, never as HTML
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<b>bold" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page.text and "unknown task &#39;t.later&#39;" in page.text
    assert page.text.count(">Requeue</button>") == 1 and "Requeue all" in page.text
    # When the task is registered and the row's Requeue button is posted
    runs: list[str] = []

    @app.register_task(name="t.later", queue=Q)
    def later(text: str, note: str) -> str:
        runs.append(text + note)
        return text + note
    [letter] = app.dead_letters(Q)
    done = post(client, "/dead/requeue", queue=Q, id=letter.id)
    # Then the page says so, and the call runs (its producer keeps its first outcome, the
    # rejection: see ivy.deadletters)
    assert done.status_code == 200 and "requeued 1 dead letter(s)" in done.text
    wait_for(lambda: runs == [XSS + "<b>bold</b>"], timeout=20, message="the requeued run")
    assert app.dead_letters(Q) == []
    # and the call lookup shows the stored (first) outcome, escaped
    found = client.get(f"/call?id={call.id}")
    assert "MessageRejected" in found.text and "<script>" not in found.text
    assert "errored" in found.text


def test_requeue_all_and_purge_with_confirmation(
        app: ivy.Ivy, dash: tuple[Dashboard, TestClient]) -> None:
    # Given two dead letters
    _, client = dash
    app.listen(queue=Q, block=False)
    for n in range(2):
        app.send_task("t.nobody", [n], queue=Q)
    wait_for(lambda: len(app.dead_letters(Q)) == 2, timeout=20, message="two dead letters")
    # When purge is posted without its confirmation
    asked = post(client, "/dead/purge", queue=Q)
    # Then it asks, and deletes nothing
    assert asked.status_code == 200 and "Yes, delete them" in asked.text
    assert "deletes 2 dead letter(s)" in asked.text
    assert len(app.dead_letters(Q)) == 2
    # When "requeue all" is posted: both go back (and are dead-lettered again, still unknown)
    again = post(client, "/dead/requeue", queue=Q, all="1")
    assert "requeued 2 dead letter(s)" in again.text
    wait_for(lambda: len(app.dead_letters(Q)) == 2, timeout=20, message="dead again")
    # When the purge is confirmed
    gone = post(client, "/dead/purge", queue=Q, confirm="yes")
    assert "purged 2 dead letter(s)" in gone.text and "No dead letters" in gone.text
    assert app.dead_letters(Q) == []


def test_failures_show_the_traceback_escaped(
        app: ivy.Ivy, dash: tuple[Dashboard, TestClient]) -> None:
    # Given a failing call with a <script> argument on a worker with events on
    _, client = dash
    _, boom = register(app)
    app.listen(queue=Q, block=False, events=True)
    call = app.delayed_call(boom, XSS)
    with pytest.raises(ivy.RemoteTaskError):
        call.result(20)
    # When the failures page is read (once the event arrived)
    # (an earlier event of the call may list it before its failure's event has come)
    wait_for(lambda: call.id in (text := client.get("/failures").text)
             and "ended errored" in text, timeout=20, message="the failure listed")
    page = client.get("/failures")
    # Then it shows the error and the traceback, escaped
    assert "Traceback (most recent call last)" in page.text and "ended errored" in page.text
    assert "<script>alert" not in page.text
    assert "ValueError: bad input &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    # and the call lookup has the same
    found = client.get(f"/call?id={call.id}").text
    assert "errored" in found and "Traceback" in found and "<script>alert" not in found


def test_call_lookup_of_an_unknown_id(dash: tuple[Dashboard, TestClient]) -> None:
    _, client = dash
    page = client.get("/call?id=nope")
    assert page.status_code == 200
    assert "stores no final notification of this call" in page.text
    assert "call id" in client.get("/call").text


# -- security (memory backends: nothing here depends on the backend) ------------------------


def test_live_stream_from_a_real_server(memory_url: str) -> None:
    # Given the dashboard served by uvicorn, and a worker with events on
    app = ivy.Ivy(memory_url, memory_url)
    double, _ = register(app)
    app.listen(queue=Q, block=False, events=True)
    view, dashboard = make_dashboard((memory_url, memory_url))
    try:
        with Server(create_app(dashboard)) as server, httpx.Client(timeout=10) as http:
            assert server.port > 0
            app.delayed_call(double, 1).result(10)
            # When the stream is read
            with http.stream("GET", server.url + "/stream") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                updates = []
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        updates.append(json.loads(line[6:]))
                        if sum(updates[-1]["series"]["succeeded"]) >= 1 or len(updates) > 20:
                            break
            # Then updates come one a second, with the queue and the counted task
            assert sum(updates[-1]["series"]["succeeded"]) == 1
            assert updates[-1]["queues"][0]["name"] == Q
            # and stopping the server while a stream is open does not hang
            held = http.send(http.build_request("GET", server.url + "/stream"), stream=True)
            assert next(held.iter_lines()).startswith("retry:")
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < GRACEFUL_SHUTDOWN + 5
            held.close()
    finally:
        view.close()
        app.close()


def test_a_broker_that_is_down_shows_as_errors_not_crashes(memory_url: str) -> None:
    # Given a dashboard whose RabbitMQ does not answer (nothing listens on port 1)
    pytest.importorskip("pika", reason="pip install 'ivy-queue[amqp]'")
    view = ivy.Ivy("amqp://guest:guest@127.0.0.1:1/%2F", memory_url)
    dashboard = Dashboard(view, view.start_notification_producer(), [Q], refresh=0)
    try:
        with TestClient(create_app(dashboard), base_url="http://127.0.0.1") as client:
            # Then the overview names the error for the queue
            page = client.get("/")
            assert page.status_code == 200 and "dead letters" not in page.text
            [row] = client.get("/api/live").json()["queues"]
            assert row["size"] is None and row["error"]
            assert client.get(f"/dead?queue={Q}").status_code == 200
            # and an action says it failed, and changed nothing
            failed = post(client, "/dead/requeue", queue=Q, all="1")
            assert failed.status_code == 502 and "Requeueing on queue &#39;q&#39;" in failed.text
            assert post(client, "/dead/purge", queue=Q, confirm="yes").status_code == 502
            assert post(client, "/dead/purge").status_code == 400  # no queue named
            assert client.get("/login", follow_redirects=False).status_code == 303
    finally:
        view.close()


def test_templates_and_static_files_are_package_data() -> None:
    # Every file the dashboard serves or renders matches pyproject's package-data patterns
    # (so the wheel has them: nothing comes from elsewhere at run time)
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["ivy"]
    files = [p for d in ("templates", "static") for p in (ROOT / "ivy/dashboard" / d).iterdir()]
    assert len(files) >= 10
    for path in files:
        relative = path.relative_to(ROOT / "ivy").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
    assert "http" not in (ROOT / "ivy/dashboard/templates/base.html").read_text()


def test_collector_counts_per_second_in_its_window() -> None:
    # Given a collector on a clock the test moves, and events arriving
    now = [1000.5]
    collector = Collector(ivy.Ivy("memory://collector").start_notification_producer(),
                          window=3, max_failures=2, clock=lambda: now[0])

    def event(kind: str, call_id: str) -> None:
        collector.add(json.dumps({"event": kind, "id": call_id, "name": "t"}).encode())

    for kind in ("succeeded", "succeeded", "failed", "received"):
        event(kind, "a")
    now[0] = 1001.2
    event("succeeded", "b")
    for call_id in ("c", "d", "e"):
        event("dead_lettered", call_id)
    collector.add(b"not json")
    collector.add(b"[1]")
    # Then the finished seconds are counted, the current one not yet, the oldest dropped
    now[0] = 1002.0
    assert collector.series() == {"end": 1001, "succeeded": [0, 2, 1], "failed": [0, 1, 0]}
    now[0] = 1005.0
    assert collector.series()["succeeded"] == [0, 0, 0]
    # and the failures are the newest few, newest first; each call's last event is kept
    assert [f["id"] for f in collector.failures()] == ["e", "d"]
    assert (collector.last_event_of("a") or {})["event"] == "received"
    assert collector.events_seen == 8


def test_forged_heartbeats_events_and_dead_letters_render_as_dashes(
        sqlite_url: str, redis_url: str) -> None:
    # Given a dashboard on a SQLite queue file and a Redis notifier, listing every queue
    import sqlite3

    import redis

    view = ivy.Ivy(sqlite_url, redis_url)
    dashboard = Dashboard(view, view.start_notification_producer(), [], refresh=0)
    plain = redis.Redis.from_url(redis_url)
    channel = f"ivy:events@{plain.connection_pool.connection_kwargs.get('db') or 0}"
    channel = "ivy:events" if channel == "ivy:events@0" else channel
    beats: dict[str, Any] = {
        f"forged-many-{k}": {"name": f"forged-many-{k}", "in_flight": "x", "concurrency": [1],
                             "queues": [f"queue-{k}-{'x' * 150}-{n}" for n in range(20_000)],
                             "last_seen": 1e300, "events": "yes"} for k in range(3)}
    beats |= {
        "forged-list": [1, 2],
        "forged-odd": {"name": {"x": 1}, "queues": "abc", "last_seen": 10**15,
                       "processed": 10**30},
    }
    try:
        with TestClient(create_app(dashboard), base_url="http://127.0.0.1") as client:
            # and forged data written with plain clients: heartbeats, events, a dead letter
            far = int(time.time() * 1000) + 600_000
            for name, beat in beats.items():
                plain.zadd("ivy:workers", {name: far})
                plain.hset("ivy:workers:info", name, json.dumps(beat))
            events = [
                {"event": "failed", "id": "forged-1", "attempt": "x", "time": 1e300,
                 "error": "not an object", "name": ["t"]},
                {"event": "dead_lettered", "id": [1, 2], "attempt": 10**30,
                 "time": "yesterday", "error": {"type": [1], "message": {"a": 1}}},
                {"event": "failed", "id": "forged-3", "time": float("nan"), "attempt": True,
                 "queue": {"q": 1}, "reason": 7}]
            seen = dashboard.collector.events_seen
            for event in events:
                plain.publish(channel, json.dumps(event))
            wait_for(lambda: dashboard.collector.events_seen >= seen + len(events),
                     timeout=20, message="the forged events")
            assert view.dead_letters(Q) == []  # the file and its tables exist
            with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
                db.execute("INSERT INTO ivy_dead_letters (queue, body, reason, time) "
                           "VALUES (?, ?, ?, ?)", (Q, b'{"forged": 1}', "forged", 1e15))
            # Then every page renders, with "-" where a value cannot be read
            overview = client.get("/")
            assert overview.status_code == 200
            # and a heartbeat naming 20,000 queues costs a page of bounded size
            assert len(overview.content) < 300_000
            assert "and 19900 more" in overview.text
            assert "and 101 more queue(s), not listed" in overview.text  # 3 x 100 and q
            live = client.get("/api/live")
            assert live.status_code == 200 and len(live.content) < 300_000
            [many] = [w for w in live.json()["workers"] if w["name"] == "forged-many-0"]
            assert len(many["queues"]) == 100 and many["in_flight"] is None
            assert many["last_seen"] is None and many["events"] is False
            failures = client.get("/failures")
            assert failures.status_code == 200 and "forged-1" in failures.text
            assert "attempt x" not in failures.text
            assert client.get("/call?id=forged-1").status_code == 200
            dead = client.get(f"/dead?queue={Q}")
            assert dead.status_code == 200 and "forged" in dead.text
            assert "<td>-</td>" in dead.text
    finally:
        plain.zrem("ivy:workers", *beats)
        plain.hdel("ivy:workers:info", *beats)
        plain.close()
        view.close()
