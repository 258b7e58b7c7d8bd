"""The web app: ``uvicorn fastapi_app.main:web``. Its lifespan starts the ivy app with the web
app and closes it with it (:func:`ivy.contrib.asgi.lifespan`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request

import ivy
from ivy.contrib.asgi import lifespan

from .tasks import queue, quote, send_receipt

#: seconds a request waits for a task's result
RESULT_TIMEOUT = 10.0


@asynccontextmanager
async def app_lifespan(web: FastAPI) -> AsyncIterator[dict[str, str]]:
    """The web app's own lifespan (a database pool, say): it runs inside ivy's."""
    yield {"shop_name": "the example shop"}


web = FastAPI(lifespan=lifespan(queue, app_lifespan, timeout=10))


@web.get("/")
def home(request: Request) -> dict[str, str]:
    """The state the web app's own lifespan yielded, through ivy's."""
    return {"shop": request.state.shop_name}


@web.post("/orders", status_code=202)
def place_order(order_id: int, email: str) -> dict[str, str]:
    """Enqueue the receipt and answer at once, with the call's id."""
    call = send_receipt.delay(order_id, email)
    return {"call_id": call.id, "status": call.status}


@web.get("/quote")
async def get_quote(items: int, unit_price: int) -> dict[str, int]:
    """Compute on a worker and wait for the result, without holding the event loop."""
    call = quote.delay(items, unit_price)
    try:
        cents = await asyncio.wait_for(call, RESULT_TIMEOUT)
    except TimeoutError:
        raise HTTPException(504, f"no worker answered within {RESULT_TIMEOUT} s") from None
    except ivy.RemoteTaskError as exc:
        raise HTTPException(502, f"the task failed: {exc}") from None
    return {"items": items, "total_cents": cents}
