"""The dashboard's ASGI application: :func:`create_app` wires a
:class:`~ivy.dashboard.state.Dashboard` to its routes, templates, static files and guard."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import routes
from .security import CSRF_FIELD, Access, Guard, csrf_token
from .state import Dashboard

HERE = Path(__file__).resolve().parent


def _when(stamp: Any) -> str:
    """A Unix time as UTC text; ``-`` for anything else (a string, 1e300, NaN, 10**15)."""
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool) or not stamp:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _json(value: Any) -> str:
    """A value as JSON text (escaped by the template like any other text)."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def create_app(dashboard: Dashboard, *, token: str | None = None, start: bool = True,
               max_streams: int = routes.MAX_STREAMS) -> Starlette:
    """The dashboard as an ASGI app. ``token`` (None: none, loopback only) protects every
    request (see :mod:`ivy.dashboard.security`). With ``start``, the app's lifespan starts
    the dashboard's event collector and stops it at shutdown. At most ``max_streams`` live
    streams are served at once."""
    access = Access(token)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = _when
    templates.env.filters["json"] = _json
    templates.env.globals["csrf_token"] = csrf_token
    templates.env.globals["CSRF_FIELD"] = CSRF_FIELD

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.stopping = asyncio.Event()
        if start:
            await asyncio.to_thread(dashboard.start)
        try:
            yield
        finally:
            app.state.stopping.set()
            if start:
                await asyncio.to_thread(dashboard.close)

    app = Starlette(
        routes=[
            Route("/", routes.overview, name="overview"),
            Route("/stream", routes.stream, name="stream"),
            Route("/api/live", routes.live_json, name="live"),
            Route("/dead", routes.dead, name="dead"),
            Route("/dead/requeue", routes.requeue, methods=["POST"], name="requeue"),
            Route("/dead/purge", routes.purge, methods=["POST"], name="purge"),
            Route("/queues/pause", routes.pause, methods=["POST"], name="pause"),
            Route("/queues/resume", routes.resume, methods=["POST"], name="resume"),
            Route("/failures", routes.failures, name="failures"),
            Route("/call", routes.call, name="call"),
            Route("/login", routes.login, methods=["GET", "POST"], name="login"),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        middleware=[Middleware(Guard, access=access)],
        lifespan=lifespan)
    app.state.dashboard = dashboard
    app.state.templates = templates
    app.state.stopping = asyncio.Event()
    app.state.access = access
    app.state.streams = 0
    app.state.max_streams = max_streams
    return app
