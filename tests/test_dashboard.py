"""The web dashboard (``ivy dashboard``, :mod:`ivy.dashboard`) over HTTP on memory, SQLite and
RabbitMQ + Redis: the overview and its live data, dead letters (escaped; requeue, requeue
all, purge with a confirmation), failures with tracebacks, call lookup; the security model
(loopback Host, token, CSRF); the live stream from a real uvicorn server. The browser test is
in test_dashboard_browser.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ROOT, wait_for
from starlette.testclient import TestClient

import ivy
from ivy.dashboard.collector import Collector
from ivy.dashboard.security import SESSION_COOKIE, check_bind
from ivy.dashboard.server import GRACEFUL_SHUTDOWN, Server
from ivy.dashboard.state import Dashboard
from ivy.dashboard.web import create_app
from ivy.errors import IvyError

Q = "q"  # a name the RabbitMQ fixture empties before and after each test
XSS = "<script>alert('x')</script>"
TOKEN = "s3cret-token-for-the-tests"


def make_dashboard(urls: tuple[str, str]) -> tuple[ivy.Ivy, Dashboard]:
    view = ivy.Ivy(*urls)
    return view, Dashboard(view, view.start_notification_producer(), [Q], refresh=0)


@pytest.fixture
def dash(urls: tuple[str, str]) -> Iterator[tuple[Dashboard, TestClient]]:
    """A dashboard on the backends of ``app``, its collector reading events already."""
    view, dashboard = make_dashboard(urls)
    with TestClient(create_app(dashboard), base_url="http://127.0.0.1") as client:
        yield dashboard, client
    view.close()


def register(app: ivy.Ivy) -> tuple[ivy.Task[Any, Any], ivy.Task[Any, Any]]:
    @app.register_task(name="t.double", queue=Q)
    def double(n: int) -> int:
        return n * 2

    @app.register_task(name="t.boom", queue=Q)
    def boom(text: str) -> None:
        raise ValueError(f"bad input {text}")

    return double, boom


def post(client: TestClient, path: str, **data: Any) -> httpx.Response:
    """POST a form with the CSRF token, as a page of the dashboard does."""
    if client.cookies.get("ivy_csrf") is None:
        client.get("/call")  # any page sets the cookie
    return client.post(path, data={"csrf": client.cookies.get("ivy_csrf"), **data})


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
    wait_for(lambda: call.id in client.get("/failures").text, timeout=20,
             message="the failure listed")
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

@pytest.fixture
def memory_dashboard(memory_url: str) -> Iterator[Dashboard]:
    view, dashboard = make_dashboard((memory_url, memory_url))
    yield dashboard
    view.close()


def test_without_a_token_only_loopback_host_names_are_served(
        memory_dashboard: Dashboard) -> None:
    app = create_app(memory_dashboard)
    for base in ("http://127.0.0.1:8080", "http://localhost", "http://[::1]:8080"):
        with TestClient(app, base_url=base) as client:
            assert client.get("/").status_code == 200, base
    # a page on another site that rebinds its name to 127.0.0.1 is refused
    with TestClient(app, base_url="http://evil.example") as client:
        refused = client.get("/")
        assert refused.status_code == 403 and "not host 'evil.example'" in refused.text


def test_actions_need_the_csrf_token(memory_url: str, memory_dashboard: Dashboard) -> None:
    app = ivy.Ivy(memory_url, memory_url)
    app.listen(queue=Q, block=False)
    app.send_task("t.nobody", [1], queue=Q)
    wait_for(lambda: app.dead_letters(Q), timeout=20, message="the dead letter")
    with TestClient(create_app(memory_dashboard), base_url="http://127.0.0.1") as client:
        page = client.get(f"/dead?queue={Q}")
        csrf = client.cookies.get("ivy_csrf")
        assert csrf and f'value="{csrf}"' in page.text
        headers = page.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        for data in ({"queue": Q}, {"queue": Q, "csrf": "forged"}):
            refused = client.post("/dead/purge", data={**data, "confirm": "yes"})
            assert refused.status_code == 403 and "CSRF" in refused.text
        # a form from another site has no cookie: the token alone is refused too
        fresh = TestClient(create_app(memory_dashboard), base_url="http://127.0.0.1")
        assert fresh.post("/dead/purge", data={"queue": Q, "csrf": csrf,
                                               "confirm": "yes"}).status_code == 403
        assert client.get("/dead/purge").status_code == 405  # actions are POSTs only
    assert len(app.dead_letters(Q)) == 1
    app.close()


def test_with_a_token_every_request_needs_it(memory_dashboard: Dashboard) -> None:
    app = create_app(memory_dashboard, token=TOKEN)
    # Given a client without the token, on any host name
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as c:
        # Then a page sends it to the login form, and anything else is refused
        page = c.get("/dead?queue=q", headers={"accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/dead%3Fqueue%3Dq"
        for path in ("/api/live", "/static/dashboard.js", "/stream", "/call?id=x"):
            assert c.get(path).status_code == 401, path
        assert c.post("/dead/purge", data={"queue": Q, "confirm": "yes"}).status_code == 401
        # and the login page shows nothing of the backends
        login = c.get("/login?next=/failures")
        assert login.status_code == 200 and memory_dashboard.queue_url not in login.text
        # When a wrong token is given: refused
        assert c.post("/login", data={"token": "wrong", "next": "/"}).status_code == 401
        assert c.get("/api/live", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/live?token=wrong").status_code == 401
        # When the right one is sent as a header: served
        assert c.get("/api/live", headers={"authorization": f"Bearer {TOKEN}"}).is_success
        # When it is a parameter: redirected to the same address without it, logged in
        moved = c.get(f"/call?id=abc&token={TOKEN}")
        assert moved.status_code == 303 and moved.headers["location"] == "/call?id=abc"
        cookie = c.cookies.get(SESSION_COOKIE)
        assert cookie and TOKEN not in cookie  # the cookie is an HMAC, not the token
        assert c.get("/call?id=abc").status_code == 200
    # When the login form is used: the cookie, and back to the page asked for (local only)
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as c:
        done = c.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert done.status_code == 303 and done.headers["location"] == "/"
        assert c.get("/").status_code == 200 and c.get("/failures").status_code == 200


def test_binding_beyond_loopback_needs_a_token() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "dashboard.example"):
        with pytest.raises(IvyError, match="without a token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(IvyError, match="at least 16"):
        check_bind("127.0.0.1", "short")
    with pytest.raises(IvyError, match="at least 16"):
        create_app(Dashboard(ivy.Ivy("memory://x", "memory://x"),
                             ivy.Ivy("memory://x").start_notification_producer()),
                   token="short")


def test_ivy_dashboard_refuses_a_public_address_without_a_token(tmp_path: Any) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "ivy", "dashboard", "--host", "0.0.0.0", "--queue-url",
         f"sqlite:///{tmp_path / 'ivy.db'}"], capture_output=True, text=True, timeout=60,
        env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing to serve the dashboard on '0.0.0.0' without a token" in result.stderr
    assert "IVY_DASHBOARD_TOKEN" in result.stderr
    assert not (tmp_path / "ivy.db").exists()  # refused before connecting to anything
    helped = subprocess.run([sys.executable, "-m", "ivy", "dashboard", "--help"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert "--token" in helped.stdout and "--queue" in helped.stdout


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


def test_ivy_dashboard_serves_until_sigterm(tmp_path: Any) -> None:
    # Given `ivy dashboard` on a free port, with its token in the environment
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    env = {**os.environ, "IVY_DASHBOARD_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ivy", "dashboard", "--queue-url", url, "--notifier-url", url,
         "--queue", Q, "--port", str(port), "--log-level", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(base + "/api/live", timeout=2).status_code == 401
            except httpx.TransportError:
                return process.poll() is not None
        wait_for(answers, timeout=30, interval=0.1, message="the dashboard to answer")
        assert process.poll() is None
        # Then it needs the token, and serves with it
        live = httpx.get(base + "/api/live", headers={"authorization": f"Bearer {TOKEN}"})
        assert live.json()["queues"][0]["name"] == Q
        # When it gets SIGTERM, it stops at once and exits 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stdout is not None
    output = process.stdout.read().decode()
    assert f"http://127.0.0.1:{port}/" in output and TOKEN not in output


def test_ivy_dashboard_on_a_port_in_use_says_so(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ivy", "dashboard", "--queue-url", "memory://x",
             "--notifier-url", "memory://x", "--port", str(port)], capture_output=True,
            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.returncode == 2
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr
    assert "address already in use" in result.stderr
