"""The dashboard in a real headless browser: Debian's chromium driven by Playwright (no
browser download: ``executable_path`` is the system's). A real worker process with events on,
the dashboard served by uvicorn on a free port: the page shows the queue and a task that ran
(the live chart, fed by server-sent events), and Requeue on a dead letter makes it run.

Set ``IVY_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to save a screenshot of the overview."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx2 as httpx
import pytest
from common import SUPPORT_DIR, require_service, wait_for
from dashboard_support import TOKEN, form_csrf

pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright: pip "
                    "install -e '.[test]' (not in .[test-core])")
from playwright.sync_api import Page, expect, sync_playwright

import ivy
from ivy.dashboard.security import SESSION_COOKIE
from ivy.dashboard.server import Server
from ivy.dashboard.state import Dashboard
from ivy.dashboard.web import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
Q = "dash"


def start_worker(url: str) -> tuple[subprocess.Popen[bytes], list[str]]:
    """``ivy worker dashboard_tasks --events`` on ``url``; returns once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "dashboard_tasks", "--queue", Q, "--events",
         "--heartbeat", "0.5", "--queue-url", url, "--notifier-url", url],
        cwd=SUPPORT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            lines.append(raw.decode(errors="replace"))
            if "listening on" in lines[-1]:
                listening.set()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    listening.wait(60)
    assert process.poll() is None, "".join(lines)
    return process, lines


def chart_total(page: Page, at_least: int) -> None:
    """Wait until the live chart has counted ``at_least`` completed tasks (read from an
    attribute: the page's Content-Security-Policy forbids evaluating test scripts in it)."""
    wait_for(lambda: int(page.locator("#chart").get_attribute("data-total-succeeded") or 0)
             >= at_least, timeout=20, interval=0.1, message=f"{at_least} tasks in the chart")


def test_browser_sees_a_task_and_requeues_a_dead_letter(tmp_path: Path) -> None:
    require_service("chromium", Path(CHROMIUM).exists(),
                    f"{CHROMIUM} is missing: apt-get install chromium")
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    marker = tmp_path / "broken"
    marker.write_text("dash.flaky fails while this file exists")
    view = ivy.Ivy(url, url)
    dashboard = Dashboard(view, view.start_notification_producer(), [Q], refresh=0.5)
    producer = ivy.Ivy(url, url)
    worker, lines = start_worker(url)
    try:
        with Server(create_app(dashboard)) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            # Given the overview open, a task that ran and one dead-lettered after its retry
            page.goto(server.url + "/")
            expect(page.locator("#live-state")).to_contain_text("live", timeout=20_000)
            calls = [producer.send_task("dash.double", [n], queue=Q) for n in range(8)]
            assert producer.wait(calls, timeout=30) == [n * 2 for n in range(8)]
            flaky = producer.send_task("dash.flaky", [str(marker), 4], queue=Q, max_retries=1)
            with pytest.raises(ivy.RemoteTaskError, match="still exists"):
                flaky.result(30)
            wait_for(lambda: producer.dead_letters(Q), timeout=30, message="the dead letter")
            # Then the page shows the queue, the worker and the tasks, without a reload
            chart_total(page, 8)
            expect(page.locator("#queues")).to_contain_text(Q)
            expect(page.locator("#workers")).to_contain_text(Q)
            expect(page.locator("#events-note")).to_be_hidden()
            expect(page.locator("#queues tr").first.locator("td").nth(2)).to_have_text("1")
            screenshot = os.environ.get("IVY_DASHBOARD_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
            # When the task is fixed and Requeue is clicked on its dead letter
            page.get_by_role("link", name="dead letters").click()
            row = page.locator("table.letters tbody tr")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("dash.flaky")
            expect(row).to_contain_text("still exists")
            marker.unlink()
            row.get_by_role("button", name="Requeue", exact=True).click()
            # Then it is back on the queue, and runs
            expect(page.locator(".notice")).to_contain_text("requeued 1 dead letter(s)")
            wait_for(lambda: (dashboard.collector.last_event_of(flaky.id) or {}).get("event")
                     == "succeeded", timeout=30, message="the requeued call to succeed")
            page.goto(server.url + "/")
            chart_total(page, 9)
            expect(page.locator("#queues tr").first.locator("td").nth(2)).to_have_text("0")
            # and the failures page shows the first runs' traceback
            page.goto(server.url + "/failures")
            expect(page.locator("pre.traceback").first).to_contain_text("RuntimeError")
            browser.close()
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        producer.close()
        view.close()
    assert worker.returncode == 0, "".join(lines)


ATTACK = """<!doctype html><html><body><form id="f" method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="queue" value="{queue}">
<input type="hidden" name="confirm" value="yes"></form>
<script>document.cookie = "{cookie}; path=/"; document.getElementById("f").submit();</script>
</body></html>"""


class _AttackPage(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("token", "tossed"), [
    (None, "csrf-cookie"), (TOKEN, "csrf-cookie"), (None, "attacker-session")])
def test_a_page_on_another_port_cannot_purge(memory_url: str, token: str | None,
                                              tossed: str) -> None:
    require_service("chromium", Path(CHROMIUM).exists(),
                    f"{CHROMIUM} is missing: apt-get install chromium")
    # Given dead letters, and the dashboard at http://127.0.0.1:PORT
    app = ivy.Ivy(memory_url, memory_url)
    app.listen(queue=Q, block=False)
    for n in range(3):
        app.send_task("t.nobody", [n], queue=Q)
    wait_for(lambda: len(app.dead_letters(Q)) == 3, timeout=20, message="3 dead letters")
    view = ivy.Ivy(memory_url, memory_url)
    dashboard = Dashboard(view, view.start_notification_producer(), [Q], refresh=0)
    try:
        with Server(create_app(dashboard, token=token), token=token) as server, \
                sync_playwright() as p:
            # and a page of another server on the same host (the same site for the browser,
            # which sends the dashboard's SameSite=Strict cookies with its forms), which
            # plants a cookie for the host and submits a purge at once
            if tossed == "csrf-cookie":  # the double-submit cookie of old, and its value
                cookie, csrf = "ivy_csrf=tossed", "tossed"
            else:  # a session of the dashboard that the attacker opened, with its CSRF token
                with httpx.Client(base_url=server.url) as own:
                    page_html = own.get(f"/dead?queue={Q}").text
                    cookie = f"{SESSION_COOKIE}={own.cookies[SESSION_COOKIE]}"
                    csrf = form_csrf(page_html)
            handler = type("Attack", (_AttackPage,), {"page": ATTACK.format(
                action=f"{server.url}/dead/purge", csrf=csrf, queue=Q,
                cookie=cookie).encode()})
            attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=attacker.serve_forever, daemon=True).start()
            try:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page()
                if token is not None:  # the victim is logged in
                    page.goto(f"{server.url}/?token={token}")
                    expect(page.locator("#queues")).to_contain_text(Q)
                # When the victim opens the page
                page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
                # Then its form reached the dashboard, which refused it
                page.wait_for_url(f"{server.url}/**", timeout=20_000)
                expect(page.locator("body")).to_contain_text("another site")
                browser.close()
            finally:
                attacker.shutdown()
                attacker.server_close()
        # and the dead letters are all there
        assert len(app.dead_letters(Q)) == 3
    finally:
        view.close()
        app.close()
