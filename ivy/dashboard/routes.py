"""The dashboard's pages and actions (Starlette endpoints). Pages that read the backends are
plain functions, which Starlette runs in its thread pool; the live stream is asynchronous."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from .security import Access, checked_form, safe_next
from .state import DEAD_PAGE_LIMIT, Dashboard

#: seconds between two updates of the live stream
TICK = 1.0
#: live streams served at once (each holds a connection and reads the overview every
#: second); more are answered 503, and browsers try again after the ``retry`` delay
MAX_STREAMS = 50


class _CountedStream(StreamingResponse):
    """A stream that gives its place back (``app.state.streams``) when it ends, however."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            scope["app"].state.streams -= 1


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    dashboard = _dashboard(request)
    context.update(queue_url=dashboard.queue_url, notifier_url=dashboard.notifier.url,
                   root=_root(request),
                   token_set=request.app.state.access.token is not None)
    return _templates(request).TemplateResponse(request, name, context,
                                                status_code=status_code)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _back(request: Request, path: str, **query: Any) -> RedirectResponse:
    return RedirectResponse(f"{_root(request)}{path}?{urlencode(query)}", status_code=303)


def overview(request: Request) -> Response:
    dashboard = _dashboard(request)
    data = dashboard.overview()
    collector = dashboard.collector
    return _page(request, "overview.html", queues=data["queues"],
                 queues_more=data["queues_more"], workers=data["workers"],
                 workers_more=data["workers_more"],
                 workers_error=data["workers_error"], events_seen=collector.events_seen,
                 events_error=collector.error,
                 series=json.dumps(collector.series()), window=collector.window)


def live_json(request: Request) -> Response:
    return JSONResponse(_dashboard(request).live())


async def stream(request: Request) -> Response:
    """Server-sent events: the overview's data every :data:`TICK` seconds; a 503 when
    ``app.state.max_streams`` streams are open already."""
    dashboard = _dashboard(request)
    stopping: asyncio.Event = request.app.state.stopping
    state = request.app.state
    if state.streams >= state.max_streams:
        return PlainTextResponse(f"{state.streams} live streams are open already: try again "
                                 "later", status_code=503, headers={"Retry-After": "10"})

    async def events() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        while not stopping.is_set():
            data = await run_in_threadpool(dashboard.live)
            yield f"event: live\ndata: {json.dumps(data)}\n\n"
            if await request.is_disconnected():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), TICK)

    state.streams += 1  # given back by _CountedStream (no await since the check above)
    return _CountedStream(events(), media_type="text/event-stream",
                          headers={"X-Accel-Buffering": "no"})


def dead(request: Request) -> Response:
    queue = request.query_params.get("queue", "")
    if not queue:
        return _page(request, "message.html", title="Dead letters", status_code=400,
                     message="name the queue: /dead?queue=NAME (see the overview)")
    dashboard = _dashboard(request)
    error = None
    try:
        letters = dashboard.dead_letters(queue)
    except Exception as exc:
        letters, error = [], f"{type(exc).__name__}: {exc}"
    return _page(request, "dead.html", queue=queue, letters=letters, error=error,
                 limit=DEAD_PAGE_LIMIT, notice=_notice(request, queue))


def _notice(request: Request, queue: str) -> str | None:
    """What the last action did, from the numbers in the address it redirected to (only
    numbers: a link cannot put text of its own on the page)."""
    def number(key: str) -> int | None:
        value = request.query_params.get(key, "")
        return int(value) if value.isdigit() else None

    requeued, missing, purged = number("requeued"), number("missing"), number("purged")
    if purged is not None:
        return f"purged {purged} dead letter(s) of queue {queue!r}"
    if requeued is None:
        return None
    notice = f"requeued {requeued} dead letter(s) to queue {queue!r}"
    if missing:
        notice += f"; {missing} of those named were not found (already requeued?)"
    return notice


async def _queue_of(request: Request) -> tuple[Any, str]:
    form = await checked_form(request)
    queue = str(form.get("queue") or "")
    if not queue:
        raise HTTPException(400, "the form names no queue: submit it from the dashboard's page")
    return form, queue


def _failed(request: Request, what: str, queue: str, exc: Exception) -> Response:
    return _page(request, "message.html", status_code=502, title=f"{what} failed",
                 message=f"{what} on queue {queue!r} of {_dashboard(request).queue_url} "
                         f"failed: {type(exc).__name__}: {exc}. Nothing was lost; try again.")


async def requeue(request: Request) -> Response:
    form, queue = await _queue_of(request)
    ids = None if form.get("all") else [str(i) for i in form.getlist("id")]
    try:
        count = await run_in_threadpool(_dashboard(request).requeue, queue, ids)
    except Exception as exc:
        return _failed(request, "Requeueing", queue, exc)
    missing = len(ids) - count if ids is not None and count < len(ids) else 0
    return _back(request, "/dead", queue=queue, requeued=count, missing=missing)


async def purge(request: Request) -> Response:
    form, queue = await _queue_of(request)
    try:
        if form.get("confirm") != "yes":
            letters = await run_in_threadpool(_dashboard(request).dead_letters, queue)
            return _page(request, "purge.html", queue=queue, count=len(letters),
                         limit=DEAD_PAGE_LIMIT)
        count = await run_in_threadpool(_dashboard(request).purge, queue)
    except Exception as exc:
        return _failed(request, "Purging", queue, exc)
    return _back(request, "/dead", queue=queue, purged=count)


async def pause(request: Request) -> Response:
    return await _set_paused(request, True)


async def resume(request: Request) -> Response:
    return await _set_paused(request, False)


async def _set_paused(request: Request, paused: bool) -> Response:
    """Pause or resume the queue the form names; back to the overview."""
    _, queue = await _queue_of(request)
    try:
        await run_in_threadpool(_dashboard(request).set_paused, queue, paused)
    except Exception as exc:
        return _failed(request, "Pausing" if paused else "Resuming", queue, exc)
    return RedirectResponse(f"{_root(request)}/", status_code=303)


def failures(request: Request) -> Response:
    dashboard = _dashboard(request)
    return _page(request, "failures.html", failures=dashboard.failures(),
                 events_seen=dashboard.collector.events_seen,
                 events_error=dashboard.collector.error)


def call(request: Request) -> Response:
    call_id = request.query_params.get("id", "").strip()
    found = _dashboard(request).lookup(call_id) if call_id else None
    return _page(request, "call.html", call_id=call_id, found=found)


async def login(request: Request) -> Response:
    access: Access = request.app.state.access
    if access.token is None:  # nothing to log in to
        return RedirectResponse(_root(request) + "/", status_code=303)
    target = safe_next(request.query_params.get("next"))
    if request.method == "POST":
        form = await request.form()
        given = str(form.get("token") or "")
        target = safe_next(str(form.get("next") or "/"))
        right = access.guess(request, given)
        if isinstance(right, Response):
            return right
        if right:
            response = RedirectResponse(target, status_code=303)
            access.set_session(response, request)
            return response
        return _page(request, "login.html", next=target, failed=True, status_code=401)
    return _page(request, "login.html", next=target, failed=False)
