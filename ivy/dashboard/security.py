"""The dashboard's security model: loopback binding, the token and its session cookie, limits on
guesses, CSRF tokens and the Content-Security-Policy (docs/internals/dashboard.md)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlencode, urlsplit

from starlette.datastructures import URL, FormData
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from ivy.errors import IvyError

SESSION_COOKIE = "ivy_dashboard"
#: seconds a session lasts from its login (the cookie's Max-Age as well)
SESSION_LIFETIME = 12 * 3600
#: wrong token guesses a client address may make before it has to wait
FREE_GUESSES = 5
#: the longest wait between two guesses, in seconds
MAX_GUESS_WAIT = 600
#: client addresses whose failed guesses are remembered (the oldest are forgotten)
MAX_GUESSERS = 10_000
CSRF_FIELD = "csrf"
#: methods that change nothing: the only ones served without the Origin check
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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


def session_key(token: str | None) -> bytes:
    """The key of session cookies and CSRF tokens: derived from ``token`` (so the cookie
    never holds the token, and sessions outlive a restart), or random for this process when
    there is no token."""
    if token is None:
        return secrets.token_bytes(32)
    return hmac.new(token.encode(), b"ivy-dashboard-session", hashlib.sha256).digest()


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """The CSRF token that forms on this page carry: the HMAC of its session id (set by
    :class:`Guard`); empty for a request without a session (an ``Authorization`` header)."""
    session: str | None = getattr(request.state, "session", None)
    access: Access = request.app.state.access
    return access.csrf_for(session) if session else ""


async def checked_form(request: Request) -> FormData:
    """The form of a POST whose CSRF field is its session's CSRF token; else a 403."""
    form = await request.form()
    if getattr(request.state, "csrf_exempt", False):
        return form
    sent, expected = form.get(CSRF_FIELD), csrf_token(request)
    if (not expected or not isinstance(sent, str)
            or not hmac.compare_digest(sent.encode(), expected.encode())):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and submit "
                                 "its form again")
    return form


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin ``scheme://host[:port]``, the port made explicit;
    None if ``url`` is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if (default is None or not parts.hostname or "@" in parts.netloc or parts.path
            or parts.query or parts.fragment):
        return None
    return parts.scheme, parts.hostname, port or default


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header (``name[:port]``, ``[v6][:port]``), read from the header
    itself; None if the header is not well formed. Not ``request.url.hostname``: Starlette
    builds that from the server's own address when the ``Host`` is malformed (and some
    releases read a poisoned one), which would let ``Host: evil.example/x`` pass as
    loopback."""
    origin = _origin(f"http://{host}") if host.isascii() and host.isprintable() else None
    return None if origin is None else origin[1]


def foreign_origin(request: Request) -> str | None:
    """Why ``request`` (a POST) comes from another site, or None if it may be the
    dashboard's own form: its ``Origin`` must be the dashboard's ``scheme://host:port`` (the
    ``Host`` it was sent to); without an ``Origin``, ``Sec-Fetch-Site`` (if sent) must be
    ``same-origin`` or ``none``; an ``Origin: null`` (which a browser sends when a referrer
    policy hides the origin) passes only with ``Sec-Fetch-Site: same-origin``. A client that
    sends neither (a script) is let through: it still needs the token and the CSRF token.
    Pages are sent with ``Referrer-Policy: same-origin`` so that browsers name their origin
    in the forms they post (``no-referrer`` makes them send ``Origin: null``)."""
    origin, site = request.headers.get("origin"), request.headers.get("sec-fetch-site")
    if origin is None:
        if site is None or site.lower() in ("same-origin", "none"):
            return None
        return f"Sec-Fetch-Site: {site}"
    if origin == "null" and (site or "").lower() == "same-origin":
        return None  # a browser whose referrer policy hides origins, on a page of ours
    own = _origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
    if own is None or _origin(origin) != own:
        return f"Origin: {origin}"
    return None


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``"/"``: never ``//host`` (another
    site), a backslash (which browsers read as a slash) or a control character (which
    browsers drop, so ``/\t/host`` would be ``//host``)."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)):
        return "/"
    return target


class Guesses:
    """Wrong token guesses per client address (docs/internals/dashboard.md)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failed: OrderedDict[str, tuple[int, float]] = OrderedDict()  # count, until

    def wait(self, client: str) -> int:
        """Whole seconds ``client`` must wait before its next guess (0: it may guess)."""
        _, until = self._failed.get(client, (0, 0.0))
        return max(0, math.ceil(until - self.clock()))

    def failed(self, client: str) -> None:
        count = self._failed.pop(client, (0, 0.0))[0] + 1
        wait = min(2.0 ** (count - FREE_GUESSES), MAX_GUESS_WAIT) if count >= FREE_GUESSES \
            else 0.0
        self._failed[client] = (count, self.clock() + wait)
        while len(self._failed) > MAX_GUESSERS:
            self._failed.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failed.pop(client, None)


class Access:
    """Who may use the dashboard: anyone on loopback when ``token`` is None, else whoever
    shows the token (docs/internals/dashboard.md). ``clock`` (wall-clock seconds) dates sessions."""

    def __init__(self, token: str | None, *, lifetime: float = SESSION_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        check_token(token)
        self.token = token
        self.key = session_key(token)
        self.lifetime = lifetime
        self.clock = clock
        self.guesses = Guesses()

    def matches(self, given: str | None) -> bool:
        return (self.token is not None and given is not None
                and hmac.compare_digest(given.encode(), self.token.encode()))

    def guess(self, request: Request, given: str) -> Response | bool:
        """Whether ``given`` is the token, counted against the client's address; a 429 to
        send instead while that address must wait (then nothing is compared)."""
        client = request.client.host if request.client else "?"
        wait = self.guesses.wait(client)
        if wait:
            return PlainTextResponse(
                f"too many wrong tokens from {client}: try again in {wait} s",
                status_code=429, headers={"Retry-After": str(wait)})
        if self.matches(given):
            self.guesses.succeeded(client)
            return True
        self.guesses.failed(client)
        return False

    def new_session(self) -> str:
        """A new session cookie value: ``issued.id.mac``."""
        session = f"{int(self.clock())}.{secrets.token_urlsafe(24)}"
        return f"{session}.{_mac(self.key, 'session', session)}"

    def session_of(self, cookie: str | None) -> str | None:
        """The session id (``issued.id``) of a session cookie made with this key and not
        expired; None if it is not one."""
        session, _, mac = (cookie or "").rpartition(".")
        issued = session.partition(".")[0]
        if not session or not mac or not issued.isdigit():
            return None
        if not hmac.compare_digest(mac.encode(), _mac(self.key, "session", session).encode()):
            return None
        age = self.clock() - int(issued)
        return session if -60 <= age < self.lifetime else None

    def csrf_for(self, session: str) -> str:
        """The CSRF token of ``session``: only a holder of the key can make it."""
        return _mac(self.key, "csrf", session)

    def set_session(self, response: Response, request: Request,
                    value: str | None = None) -> None:
        """Give ``response`` the session cookie ``value`` (default: a new session)."""
        path = _root(request) or "/"
        response.set_cookie(session_cookie(request), value or self.new_session(),
                            max_age=int(self.lifetime), path=path, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    def refuse(self, request: Request) -> Response | None:
        """None if ``request`` may go on (``request.state.session`` then holds its session
        id, or None); else the answer to send instead."""
        request.state.session = self.session_of(request.cookies.get(session_cookie(request)))
        if self.token is None:
            host = request.headers.get("host", "")
            if is_loopback(host_name(host) or ""):
                return None
            return PlainTextResponse(
                f"this dashboard serves only http://127.0.0.1 or http://localhost, not host "
                f"{host!r}; start it with a token to serve other names", status_code=403)
        root = _root(request)
        if request.state.session is not None:
            return None
        if request.url.path == root + "/login":
            return None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            right = self.guess(request, auth[7:].strip())
            if isinstance(right, Response):
                return right
            if right:
                request.state.csrf_exempt = True
                return None
        given = request.query_params.get("token")
        right = False if given is None else self.guess(request, given)
        if isinstance(right, Response):
            return right
        if right:
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
    """Refuses POSTs from other sites, applies :class:`Access` to every request, gives each
    browser on loopback a session (for its CSRF token), and adds the security headers."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        super().__init__(app)
        self.access = access

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method not in SAFE_METHODS:
            foreign = foreign_origin(request)
            if foreign is not None:
                return self._secure(PlainTextResponse(
                    f"refused: this request comes from another site ({foreign}); actions "
                    "are taken only from the dashboard's own pages", status_code=403))
        refused = self.access.refuse(request)
        if refused is not None:
            return self._secure(refused)
        fresh = None
        if request.state.session is None and self.access.token is None:
            fresh = self.access.new_session()
            request.state.session = fresh.rpartition(".")[0]
        response = await call_next(request)
        if fresh is not None:
            self.access.set_session(response, request, fresh)
        return self._secure(response)

    @staticmethod
    def _secure(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def _local_path(request: Request) -> str:
    """The request's path if, as sent and decoded, it is a path of this site; else ``"/"``
    (``//evil.example/x`` must not become ``Location: //evil.example/x``)."""
    path, decoded = request.url.path, str(request.scope.get("path", ""))
    return path if safe_next(path) == path and safe_next(decoded) == decoded else "/"


def session_cookie(request: Request) -> str:
    """The session cookie's name: ``__Host-ivy_dashboard`` over https at ``/`` (a name only
    a secure answer of this very host can set), else ``ivy_dashboard``."""
    https = request.url.scheme == "https"
    return f"__Host-{SESSION_COOKIE}" if https and not _root(request) else SESSION_COOKIE


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
