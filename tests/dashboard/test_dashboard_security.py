"""The dashboard's security model: loopback Host names without a token, the token (header,
parameter, login form and its cookie), CSRF tokens on actions, binding beyond loopback, and the
``ivy dashboard`` command itself (refusal, token from the environment, SIGTERM, port in use)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from common import ROOT, wait_for
from dashboard_support import TOKEN, Q, csrf, form_csrf, make_dashboard
from starlette.testclient import TestClient

import ivy
from ivy.dashboard.security import SESSION_COOKIE, check_bind
from ivy.dashboard.server import Server
from ivy.dashboard.state import Dashboard
from ivy.dashboard.web import create_app
from ivy.errors import IvyError


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
        token = form_csrf(page.text)
        assert client.cookies.get(SESSION_COOKIE) and token not in page.headers["set-cookie"]
        headers = page.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        for data in ({"queue": Q}, {"queue": Q, "csrf": "forged"}, {"queue": Q, "csrf": "é"}):
            refused = client.post("/dead/purge", data={**data, "confirm": "yes"})
            assert refused.status_code == 403 and "CSRF" in refused.text
        # the token is bound to the session: another browser's session cannot use it, nor
        # one whose cookie was planted without the key (cookie tossing), nor an old-style
        # double-submit cookie
        fresh = TestClient(create_app(memory_dashboard), base_url="http://127.0.0.1")
        assert fresh.post("/dead/purge", data={"queue": Q, "csrf": token,
                                               "confirm": "yes"}).status_code == 403
        for planted in (f"{SESSION_COOKIE}=attacker.{'0' * 64}", f"ivy_csrf={token}"):
            tossed = TestClient(create_app(memory_dashboard), base_url="http://127.0.0.1")
            assert tossed.post("/dead/purge", headers={"cookie": planted},
                               data={"queue": Q, "csrf": token,
                                     "confirm": "yes"}).status_code == 403
        assert client.get("/dead/purge").status_code == 405  # actions are POSTs only
    assert len(app.dead_letters(Q)) == 1
    app.close()


@pytest.mark.parametrize("headers", [
    {"origin": "http://127.0.0.1:8081"},  # the same host on another port: same site
    {"origin": "https://127.0.0.1:8080"},
    {"origin": "http://localhost:8080"},
    {"origin": "http://evil.example"},
    {"origin": "null"},
    {"origin": "null", "sec-fetch-site": "same-site"},
    {"sec-fetch-site": "same-site"},
    {"sec-fetch-site": "cross-site"},
], ids=lambda h: " ".join(h.values()))
def test_a_post_from_another_origin_is_refused(
        memory_url: str, memory_dashboard: Dashboard, headers: dict[str, str]) -> None:
    # Given a dead letter, and a browser session on the dashboard at 127.0.0.1:8080
    app = ivy.Ivy(memory_url, memory_url)
    app.listen(queue=Q, block=False)
    app.send_task("t.nobody", [1], queue=Q)
    wait_for(lambda: app.dead_letters(Q), timeout=20, message="the dead letter")
    try:
        with TestClient(create_app(memory_dashboard),
                        base_url="http://127.0.0.1:8080") as client:
            data = {"queue": Q, "csrf": csrf(client), "confirm": "yes"}
            # When a purge with the right CSRF token comes from another origin: refused
            refused = client.post("/dead/purge", data=data, headers=headers)
            assert refused.status_code == 403 and "another site" in refused.text
            assert len(app.dead_letters(Q)) == 1
            # and a login form posted from there too
            assert client.post("/login", headers=headers).status_code == 403
            # When it comes from the dashboard's own origin: done
            own = client.post("/dead/purge", data=data, headers={
                "origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"})
            assert own.status_code == 200 and "purged 1 dead letter(s)" in own.text
            assert app.dead_letters(Q) == []
    finally:
        app.close()


def test_the_origin_check_knows_default_ports_and_tls(memory_dashboard: Dashboard) -> None:
    app = create_app(memory_dashboard, token=TOKEN)
    for base, origin in (("http://dash.example", "http://dash.example:80"),
                         ("https://dash.example", "https://dash.example"),
                         ("https://dash.example:8443", "https://DASH.example:8443")):
        with TestClient(app, base_url=base, follow_redirects=False) as c:
            done = c.post("/login", data={"token": TOKEN}, headers={"origin": origin})
            assert done.status_code == 303, (base, origin)
            refused = c.post("/login", data={"token": TOKEN},
                             headers={"origin": origin.lower().replace("dash.", "evil.")})
            assert refused.status_code == 403, (base, origin)


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


@pytest.mark.parametrize("value", ["é", "\u2603" * 40, "ÿ" * 64],
                         ids=["e-acute", "snowmen", "64 y-umlauts"])
def test_a_session_cookie_of_any_text_is_refused_not_an_error(
        memory_dashboard: Dashboard, value: str) -> None:
    # Given a cookie whose value is not ASCII (a str compare_digest cannot take)
    app = create_app(memory_dashboard, token=TOKEN)
    cookie = f"{SESSION_COOKIE}={value}".encode()
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False,
                    raise_server_exceptions=False) as c:
        # Then it is refused like a wrong cookie: the login form for a page, 401 for the rest
        page = c.get("/", headers={"accept": "text/html", "cookie": cookie})
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert c.get("/api/live", headers={"cookie": cookie}).status_code == 401


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


def test_a_link_cannot_put_text_of_its_own_on_a_page(memory_dashboard: Dashboard) -> None:
    with TestClient(create_app(memory_dashboard), base_url="http://127.0.0.1") as client:
        page = client.get("/dead", params={"queue": Q, "notice": "call 555-EVIL",
                                           "requeued": "1; go to evil.example"})
        assert page.status_code == 200
        assert "EVIL" not in page.text and "evil.example" not in page.text
        assert 'role="status"' not in page.text
        done = client.get("/dead", params={"queue": Q, "requeued": "2", "missing": "1"})
        assert "requeued 2 dead letter(s) to queue &#39;q&#39;; 1 of those named" in done.text


@pytest.mark.parametrize("path", ["//evil.example/x", "/\\evil.example/x", "/%09/evil.example"],
                         ids=["two-slashes", "backslash", "tab"])
def test_the_token_parameter_never_redirects_to_another_site(
        memory_dashboard: Dashboard, path: str) -> None:
    # Given a link to the dashboard whose path names another site, with the right token
    app = create_app(memory_dashboard, token=TOKEN)
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as c:
        moved = c.get(f"http://dashboard.example{path}?token={TOKEN}&id=1")
        # Then the redirect stays on the dashboard, at its root
        assert moved.status_code == 303
        assert moved.headers["location"] == "/?id=1"
        assert c.cookies.get(SESSION_COOKIE)


def test_token_guesses_are_limited_per_client_address(memory_dashboard: Dashboard) -> None:
    # Given a dashboard with a token, on a clock the test moves
    app = create_app(memory_dashboard, token=TOKEN)
    now = [1000.0]
    app.state.access.guesses.clock = lambda: now[0]
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as c:
        def login(token: str) -> httpx.Response:
            return c.post("/login", data={"token": token, "next": "/"})
        # When one address makes its free wrong guesses: each is refused as wrong
        for n in range(5):
            assert login(f"guess-{n}").status_code == 401
        # Then every further guess, even the right token, by any way, must wait
        for attempt in (lambda: login(TOKEN),
                        lambda: c.get("/api/live", headers={"authorization": "Bearer x"}),
                        lambda: c.get(f"/call?token={TOKEN}")):
            waited = attempt()
            assert waited.status_code == 429 and waited.headers["retry-after"] == "1"
        # and each wrong guess after the wait doubles it
        now[0] += 1
        assert login("guess-6").status_code == 401
        assert login(TOKEN).headers["retry-after"] == "2"
        now[0] += 2
        assert login("guess-7").status_code == 401
        assert login(TOKEN).headers["retry-after"] == "4"
        # When the wait is over, the right token logs in, and clears the count
        now[0] += 4
        assert login(TOKEN).status_code == 303
        assert login("guess-8").status_code == 401 and login("guess-9").status_code == 401


def test_a_session_expires_twelve_hours_after_its_login(memory_dashboard: Dashboard) -> None:
    app = create_app(memory_dashboard, token=TOKEN)
    now = [1_000_000.0]
    app.state.access.clock = lambda: now[0]
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as c:
        done = c.post("/login", data={"token": TOKEN, "next": "/failures"})
        assert done.status_code == 303 and "Max-Age=43200" in done.headers["set-cookie"]
        now[0] += 12 * 3600 - 1
        assert c.get("/failures").status_code == 200
        now[0] += 1
        expired = c.get("/failures", headers={"accept": "text/html"})
        assert expired.status_code == 303
        assert expired.headers["location"] == "/login?next=/failures"
    # Without a token, a browser whose session expired just gets a new one
    loopback = create_app(memory_dashboard)
    loopback.state.access.clock = lambda: now[0]
    with TestClient(loopback, base_url="http://127.0.0.1") as c:
        first = c.get("/call").cookies.get(SESSION_COOKIE)
        now[0] += 12 * 3600
        renewed = c.get("/call")
        assert renewed.status_code == 200 and renewed.cookies.get(SESSION_COOKIE) != first


def test_the_session_cookie_is_secure_over_https(memory_dashboard: Dashboard) -> None:
    app = create_app(memory_dashboard, token=TOKEN)
    with TestClient(app, base_url="https://dashboard.example", follow_redirects=False) as c:
        cookie = c.post("/login", data={"token": TOKEN}).headers["set-cookie"]
        assert cookie.startswith(f"__Host-{SESSION_COOKIE}=")
        assert "; secure" in cookie.lower() and "Path=/;" in cookie
        assert c.get("/failures").status_code == 200
        # a cookie of the plain name (which a page on http could set) is not read over https
        plain = c.cookies[f"__Host-{SESSION_COOKIE}"]
        c.cookies.clear()
        assert c.get("/failures", headers={"cookie": f"{SESSION_COOKIE}={plain}"}
                     ).status_code == 401
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as c:
        cookie = c.post("/login", data={"token": TOKEN}).headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and "secure" not in cookie.lower()


def test_live_streams_are_capped(memory_dashboard: Dashboard) -> None:
    # Given a dashboard serving at most two live streams
    held: list[httpx.Response] = []
    with Server(create_app(memory_dashboard, max_streams=2)) as server, \
            httpx.Client(timeout=10) as http:
        def opened() -> httpx.Response:
            answer = http.send(http.build_request("GET", server.url + "/stream"), stream=True)
            if answer.status_code == 200:
                held.append(answer)
            else:
                answer.close()
            return answer

        try:
            # When two are open, a third is refused
            lines = []  # kept: a line iterator dropped closes its connection
            for _ in range(2):
                assert opened().status_code == 200
                lines.append(held[-1].iter_lines())
                assert next(lines[-1]).startswith("retry:")
            refused = opened()
            assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
            # When one is closed, its place is given back
            held.pop(0).close()
            wait_for(lambda: opened().status_code == 200, timeout=20,
                     message="a stream's place given back")
            assert opened().status_code == 503
        finally:
            for answer in held:
                answer.close()


def test_without_a_token_a_malformed_host_is_refused(memory_dashboard: Dashboard) -> None:
    # Given the dashboard served by uvicorn on 127.0.0.1 without a token
    with Server(create_app(memory_dashboard)) as server, httpx.Client(timeout=10) as http:
        # When the Host header is not a plain name (Starlette then builds request.url from
        # the server's own address, 127.0.0.1): refused
        for host in ("evil.example/x", "evil.example@127.0.0.1", "127.0.0.1@evil.example",
                     "evil.example:abc", "[::1", "localhost:8080:1", "evil.example\\x"):
            refused = http.get(server.url + "/api/live", headers={"host": host})
            assert refused.status_code == 403, host
        # and the loopback names, with or without a port, are served
        for host in ("127.0.0.1", f"127.0.0.1:{server.port}", "localhost:1", "[::1]:8080",
                     "LOCALHOST"):
            assert http.get(server.url + "/api/live", headers={"host": host}).is_success, host


#: the first releases past the advisories published against the dashboard's dependencies
PATCHED = {"starlette": (1, 3, 0), "jinja2": (3, 1, 6), "python-multipart": (0, 0, 32)}


def test_dependency_floors_are_past_published_advisories() -> None:
    import re
    import tomllib
    from importlib.metadata import version

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dashboard"]
    floors = {}
    for spec in extra:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", spec)
        assert found, spec
        floors[found.group(1).lower()] = tuple(int(p) for p in found.group(2).split("."))
    for name, patched in PATCHED.items():
        assert floors[name] >= patched, (name, floors[name])
        installed = tuple(int(p) for p in version(name).split(".")[:3])
        assert installed >= patched, (name, installed)
