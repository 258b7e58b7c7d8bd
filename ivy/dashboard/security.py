"""The dashboard's security model (README, "Operating ivy"):

* It binds 127.0.0.1 by default and refuses any other address without a token
  (:func:`check_bind`). Without a token, only requests whose ``Host`` is a loopback name are
  served, so a web page cannot reach it through DNS rebinding.
* With a token, every request needs it: an ``Authorization: Bearer TOKEN`` header, a
  ``?token=TOKEN`` parameter (a GET is then redirected to the same address without it, with
  the session cookie set), or the session cookie set by the login form. The cookie holds an
  HMAC of the token, not the token; it is HttpOnly and SameSite=Strict.
* Actions are POSTs that carry a CSRF token: a random value in the ``ivy_csrf`` cookie that
  each form repeats in a hidden field (double submit), compared in constant time.
* Pages are sent with a Content-Security-Policy allowing only the dashboard's own scripts and
  styles; Jinja2 escapes every value put in a page (tracebacks and arguments included).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlencode

from starlette.datastructures import URL, FormData
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from ivy.errors import IvyError

SESSION_COOKIE = "ivy_dashboard"
CSRF_COOKIE = "ivy_csrf"
CSRF_FIELD = "csrf"
#: shortest token accepted
MIN_TOKEN = 16
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def is_loopback(host: str) -> bool:
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN:
        raise IvyError(f"the dashboard token is {len(token)} characters long: use at least "
                       f"{MIN_TOKEN}, e.g. from python -c 'import secrets; "
                       "print(secrets.token_urlsafe())'")


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen on an address other than loopback without a token."""
    check_token(token)
    if token is None and not is_loopback(host):
        raise IvyError(f"refusing to serve the dashboard on {host!r} without a token: anyone "
                       "who reaches that address could requeue and purge dead letters. Set "
                       "IVY_DASHBOARD_TOKEN (or --token) to a secret, or bind 127.0.0.1")


def session_value(token: str) -> str:
    """The session cookie's value for ``token``: an HMAC of it, so the cookie never holds
    the token itself."""
    return hmac.new(token.encode(), b"ivy-dashboard-session", hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """The CSRF token that forms on this page carry (set by :class:`Guard`)."""
    return str(request.state.csrf)


async def checked_form(request: Request) -> FormData:
    """The form of a POST whose CSRF field matches its CSRF cookie; else a 403."""
    form = await request.form()
    sent, cookie = form.get(CSRF_FIELD), request.cookies.get(CSRF_COOKIE)
    if (not cookie or not isinstance(sent, str)
            or not hmac.compare_digest(sent.encode(), cookie.encode())):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and submit "
                                 "its form again")
    return form


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``"/"``: never ``//host`` (another
    site), a backslash (which browsers read as a slash) or a control character (which
    browsers drop, so ``/\t/host`` would be ``//host``)."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)):
        return "/"
    return target


class Access:
    """Who may use the dashboard: anyone on loopback when ``token`` is None, else whoever
    shows the token (see the module doc)."""

    def __init__(self, token: str | None) -> None:
        check_token(token)
        self.token = token
        self.session = session_value(token) if token else None

    def matches(self, given: str | None) -> bool:
        return (self.token is not None and given is not None
                and hmac.compare_digest(given.encode(), self.token.encode()))

    def set_session(self, response: Response, request: Request) -> None:
        assert self.session is not None
        response.set_cookie(SESSION_COOKIE, self.session, httponly=True, samesite="strict",
                            path=_root(request) or "/")

    def refuse(self, request: Request) -> Response | None:
        """None if ``request`` may go on; else the answer to send instead."""
        if self.session is None:
            host = request.url.hostname or ""
            if is_loopback(host):
                return None
            return PlainTextResponse(
                f"this dashboard serves only http://127.0.0.1 or http://localhost, not host "
                f"{host!r}; start it with a token to serve other names", status_code=403)
        root = _root(request)
        if request.url.path == root + "/login":
            return None
        if hmac.compare_digest(request.cookies.get(SESSION_COOKIE, "").encode(),
                               self.session.encode()):
            return None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self.matches(auth[7:].strip()):
            return None
        if self.matches(request.query_params.get("token")):
            if request.method != "GET":
                return None
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = URL(_local_path(request)).replace(query=urlencode(rest))
            response = RedirectResponse(str(target), status_code=303)
            self.set_session(response, request)
            return response
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{root}/login?next={quote(here)}", status_code=303)
        return PlainTextResponse("this dashboard needs its token: log in at /login, or send "
                                 "'Authorization: Bearer TOKEN'", status_code=401)


class Guard(BaseHTTPMiddleware):
    """Applies :class:`Access` to every request, gives each browser its CSRF cookie, and adds
    the security headers."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        super().__init__(app)
        self.access = access

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refused = self.access.refuse(request)
        if refused is not None:
            return self._secure(refused)
        cookie = request.cookies.get(CSRF_COOKIE)
        request.state.csrf = cookie or secrets.token_urlsafe(32)
        response = await call_next(request)
        if cookie is None:
            response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True,
                                samesite="strict", path=_root(request) or "/")
        return self._secure(response)

    @staticmethod
    def _secure(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def _local_path(request: Request) -> str:
    """The request's path if, as sent and decoded, it is a path of this site; else ``"/"``
    (``//evil.example/x`` must not become ``Location: //evil.example/x``)."""
    path, decoded = request.url.path, str(request.scope.get("path", ""))
    return path if safe_next(path) == path and safe_next(decoded) == decoded else "/"


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
