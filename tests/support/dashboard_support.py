"""What the dashboard tests share: names, a dashboard on given backends, two tasks, and a
form POST with the CSRF token as the pages send it."""

from __future__ import annotations

import re
from typing import Any

import httpx2 as httpx
from starlette.testclient import TestClient

import ivy
from ivy.dashboard.security import SESSION_COOKIE, Access
from ivy.dashboard.state import Dashboard

Q = "q"  # a name the RabbitMQ fixture empties before and after each test
XSS = "<script>alert('x')</script>"
TOKEN = "s3cret-token-for-the-tests"


def make_dashboard(urls: tuple[str, str]) -> tuple[ivy.Ivy, Dashboard]:
    view = ivy.Ivy(*urls)
    return view, Dashboard(view, view.start_notification_producer(), [Q], refresh=0)


def register(app: ivy.Ivy) -> tuple[ivy.Task[Any, Any], ivy.Task[Any, Any]]:
    @app.register_task(name="t.double", queue=Q)
    def double(n: int) -> int:
        return n * 2

    @app.register_task(name="t.boom", queue=Q)
    def boom(text: str) -> None:
        raise ValueError(f"bad input {text}")

    return double, boom


def csrf(client: TestClient) -> str:
    """The CSRF token of ``client``'s session, which the forms of its pages carry."""
    if client.cookies.get(SESSION_COOKIE) is None:
        client.get("/call")  # any page starts a session
    access: Access = client.app.state.access  # type: ignore[attr-defined]
    session = access.session_of(client.cookies.get(SESSION_COOKIE))
    assert session is not None
    return access.csrf_for(session)


def form_csrf(page: str) -> str:
    """The CSRF field of the first form of a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF field"
    return found.group(1)


def post(client: TestClient, path: str, **data: Any) -> httpx.Response:
    """POST a form with the CSRF token, as a page of the dashboard does."""
    return client.post(path, data={"csrf": csrf(client), **data})
