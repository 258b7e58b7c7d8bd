"""ivy.contrib.asgi: an ivy app's lifespan in a Starlette or FastAPI app (docs/guides/asgi.md),
and the FastAPI example of examples/fastapi_app, tested with httpx (Starlette's TestClient,
which runs the lifespan, and httpx's ASGI transport) and real workers."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import httpx2 as httpx
import pytest
from common import ROOT
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import ivy
from ivy.contrib.asgi import IvyLifespan, lifespan
from ivy.queues.memory import MemoryQueueBackend

QUEUE = "asgi"


def load_example(monkeypatch: pytest.MonkeyPatch, url: str) -> ModuleType:
    """examples/fastapi_app/main.py, imported afresh (a new ivy app of its own) on ``url``."""
    monkeypatch.setenv("IVY_QUEUE_URL", url)
    monkeypatch.setenv("IVY_NOTIFIER_URL", url)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    for name in [n for n in sys.modules if n == "fastapi_app" or n.startswith("fastapi_app.")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("fastapi_app.main")


class Finished(ivy.Middleware):
    """Sets an event per task name when a worker finished a call of it."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.results: dict[str, Any] = {}

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def after_task(self, message: ivy.Message, result: Any, error: Any) -> None:
        self.results[message.name] = result if error is None else error
        self.event(message.name).set()


def test_fastapi_example_enqueues_and_awaits(monkeypatch: pytest.MonkeyPatch,
                                             sqlite_url: str) -> None:
    example = load_example(monkeypatch, sqlite_url)
    queue: ivy.Ivy = example.queue
    finished = Finished()
    queue.add_middleware(finished)
    queue.listen(queue="shop", block=False)  # a real worker, in this process
    with TestClient(example.web) as client:
        assert queue.backends.results.notifier is not None  # started by the lifespan
        assert client.get("/").json() == {"shop": "the example shop"}  # the inner lifespan's
        placed = client.post("/orders", params={"order_id": 7, "email": "a@example.com"})
        assert placed.status_code == 202, placed.text
        assert placed.json()["status"] == "scheduled" and placed.json()["call_id"]
        assert finished.event("shop.send_receipt").wait(10)
        assert finished.results["shop.send_receipt"] == "receipt 7 -> a@example.com"
        quoted = client.get("/quote", params={"items": 10, "unit_price": 250})
        assert quoted.status_code == 200, quoted.text
        assert quoted.json() == {"items": 10, "total_cents": 2250}
    with pytest.raises(ivy.IvyError, match="was closed"):  # the shutdown closed it
        example.send_receipt.delay(8, "b@example.com")


def test_await_in_handlers_over_httpx_asgi_transport(memory_url: str) -> None:
    """httpx's ASGI transport runs no lifespan: the app's is entered around the client."""
    app = ivy.Ivy(memory_url, memory_url)

    @app.register_task(name="asgi.double", queue=QUEUE)
    async def double(n: int) -> int:
        return 2 * n

    async def handler(request: Request) -> JSONResponse:
        calls = [double.delay(n) for n in range(5)]
        return JSONResponse({"results": [await call for call in calls]})

    web = Starlette(routes=[Route("/double", handler)])
    ivy_lifespan = lifespan(app, timeout=5)

    async def scenario() -> list[Any]:
        async with ivy_lifespan(web):
            transport = httpx.ASGITransport(app=web)
            async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
                answers = await asyncio.gather(*(client.get("/double") for _ in range(3)))
        return [answer.json()["results"] for answer in answers]

    app.listen(queue=QUEUE, block=False, concurrency=2)
    assert asyncio.run(scenario()) == [[0, 2, 4, 6, 8]] * 3
    with pytest.raises(ivy.IvyError, match="was closed"):
        double.delay(1)


def test_composes_with_the_web_apps_own_lifespan(memory_url: str) -> None:
    """The web app's lifespan given as ``inner`` runs inside ivy's, its state reaches the
    handlers."""
    app = ivy.Ivy(memory_url, memory_url)
    seen: list[str] = []

    @app.register_task(name="asgi.echo", queue=QUEUE)
    def echo(text: str) -> str:
        return text

    @asynccontextmanager
    async def database(web: FastAPI) -> AsyncIterator[dict[str, str]]:
        seen.append(f"database up, ivy consumer {app.backends.results.notifier is not None}")
        yield {"db": "pool"}
        seen.append(f"database down, ivy open {not app.closed}")

    web = FastAPI(lifespan=lifespan(app, database))

    @web.get("/echo")
    async def get_echo(text: str, request: Request) -> dict[str, str]:
        return {"echo": await echo.delay(text), "db": request.state.db}

    app.listen(queue=QUEUE, block=False)
    with TestClient(web) as client:
        assert client.get("/echo", params={"text": "hi"}).json() == {"echo": "hi", "db": "pool"}
    assert seen == ["database up, ivy consumer True", "database down, ivy open True"]
    assert app.closed


def test_enters_inside_the_web_apps_own_lifespan(memory_url: str) -> None:
    """The other way round: the web app's lifespan enters ivy's."""
    app = ivy.Ivy(memory_url, memory_url)
    seen: list[str] = []

    @asynccontextmanager
    async def own(web: Starlette) -> AsyncIterator[None]:
        async with lifespan(app)(web):
            seen.append(f"up, ivy consumer {app.backends.results.notifier is not None}")
            yield
            seen.append("down")
        seen.append(f"ivy closed {app.closed}")

    with TestClient(Starlette(lifespan=own)):
        assert seen == ["up, ivy consumer True"]
    assert seen == ["up, ivy consumer True", "down", "ivy closed True"]


def test_a_closed_app_cannot_start_again(memory_url: str) -> None:
    app = ivy.Ivy(memory_url, memory_url)
    web = Starlette(lifespan=lifespan(app))
    with TestClient(web):
        pass
    with pytest.raises(ivy.IvyError, match="was closed"), TestClient(web):
        pass


class GatedBackend(MemoryQueueBackend):
    """A memory backend whose sends are confirmed only once ``gate`` is set, as a broker's
    publisher confirms come back later."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = threading.Event()

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        futures: list[Future[None]] = [Future() for _ in bodies]

        def confirm() -> None:
            self.gate.wait()
            self.publish_many(queue, bodies, priority=priority, delay=delay, route=route)
            for future in futures:
                future.set_result(None)

        threading.Thread(target=confirm, daemon=True).start()
        return futures


def test_shutdown_flushes_a_pending_send_then_closes(memory_url: str) -> None:
    backend = GatedBackend(memory_url.removeprefix("memory://"))
    app = ivy.Ivy(backend, memory_url)

    @app.register_task(name="asgi.add", queue=QUEUE)
    def add(a: int, b: int) -> int:
        return a + b

    web = Starlette()

    async def scenario() -> ivy.Call[int]:
        context = lifespan(app, timeout=30)(web)
        await context.__aenter__()
        call = add.delay(1, 2)
        with pytest.raises(ivy.PublishTimeout):
            call.sent(0)  # handed over, not confirmed
        shutdown = asyncio.create_task(context.__aexit__(None, None, None))
        done, _ = await asyncio.wait({shutdown}, timeout=0.3)
        assert not done, "the shutdown did not wait for the unconfirmed send"
        assert not app.closed
        backend.gate.set()  # the broker confirms
        await shutdown
        return call

    call = asyncio.run(scenario())
    call.sent(0)  # confirmed before the close
    assert backend.size(QUEUE) == 1  # the message is in the queue for a worker
    assert app.closed
    with pytest.raises(ivy.RemoteTaskError, match="closed"):
        call.result(0)  # the producer went away before its result
    backend.close()


def test_shutdown_is_bounded_by_its_timeout(memory_url: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend(memory_url.removeprefix("memory://"))
    app = ivy.Ivy(backend, memory_url)

    @app.register_task(name="asgi.add", queue=QUEUE)
    def add(a: int, b: int) -> int:
        return a + b

    web = Starlette(lifespan=lifespan(app, timeout=0.5))
    try:
        with caplog.at_level(logging.WARNING, logger="ivy"), TestClient(web):
            add.delay(1, 2)  # never confirmed
            started = time.monotonic()
        assert time.monotonic() - started < 5
        # the flush's timeout or the shutdown's own, whichever came first
        assert "still unconfirmed" in caplog.text or "did not flush and close" in caplog.text
        join_shutdowns()  # the close goes on past the timeout if it must
        assert app.closed
    finally:
        backend.gate.set()
        backend.close()


def test_flush_only_keeps_the_app_open(memory_url: str) -> None:
    app = ivy.Ivy(memory_url, memory_url)
    web = Starlette(lifespan=lifespan(app, close=False))
    for _ in range(2):  # the lifespan runs twice on one ivy app
        with TestClient(web):
            pass
    assert not app.closed
    app.close()


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match=r"ivy\.Ivy app"):
        lifespan("memory://")  # type: ignore[arg-type]
    app = ivy.Ivy("memory://asgi-args", "memory://asgi-args")
    with pytest.raises(ivy.ConfigurationError, match="timeout"):
        lifespan(app, timeout=0)
    with pytest.raises(TypeError, match="inner"):
        lifespan(app, "not a lifespan")  # type: ignore[arg-type]
    ready = lifespan(app, timeout=3)
    assert isinstance(ready, IvyLifespan) and ready.app is app and ready.timeout == 3.0
    app.close()


def join_shutdowns() -> None:
    for thread in threading.enumerate():
        if thread.name == "ivy-asgi-shutdown":
            thread.join(10)


@pytest.fixture(autouse=True)
def _no_leftover_shutdowns() -> Iterator[None]:
    yield
    join_shutdowns()
