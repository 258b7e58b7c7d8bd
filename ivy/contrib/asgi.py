"""ASGI applications (Starlette, FastAPI): start an ivy app with the web app, close it with it.

::

    from fastapi import FastAPI
    from ivy.contrib.asgi import lifespan

    web = FastAPI(lifespan=lifespan(queue))      # Starlette(lifespan=...) alike

:func:`lifespan` returns what Starlette and FastAPI take as ``lifespan=``: a callable that
receives the web app and returns an async context manager. Entered (the server's startup), it
starts the ivy app's notification consumer, so that the first request does not pay for the
connection and results of calls sent before a restart's first request are not missed.
Exited (the server's shutdown), it waits for the messages sent so far to be confirmed by the
queue backend (``app.flush``), then closes the ivy app; both within ``timeout`` seconds in
all, so a broker that stopped answering never holds a deploy up.

Decisions where the issue is silent:

* it composes with a lifespan the web app already has, either way round: give that one as
  ``inner`` (it runs inside ivy's: ivy starts first and closes last, and its state is the web
  app's state), or enter ivy's inside your own, ``async with ivy_lifespan(web): yield``;
* startup and shutdown do their blocking parts (connecting, flushing, closing) on a thread,
  never on the event loop that serves requests;
* a flush that fails or times out is logged (``ivy.contrib.asgi``), not raised: the server is
  stopping either way, and the calls concerned failed with ``PublishError`` already. Past
  ``timeout`` the shutdown returns and the rest of the closing goes on in a daemon thread;
* ``close=False`` only flushes, for an ivy app the process goes on using (the default app
  behind ``ivy.delayed_call``, in a process that serves the web app more than once, as tests
  do); a closed ivy app cannot start again, so a web app whose lifespan runs twice (one
  ``TestClient`` block after another) needs that, or a new ivy app each time;
* ``await call`` inside a request handler works on asyncio servers (uvicorn, hypercorn with
  asyncio, Starlette's ``TestClient``): the call wakes the awaiting loop from the thread that
  reads results (:meth:`ivy.Call.__await__`). Trio is not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ivy.app import Ivy
from ivy.config import Spec
from ivy.errors import ConfigurationError, PublishError, PublishTimeout

log = logging.getLogger("ivy.contrib.asgi")

#: seconds the shutdown waits in all, for the flush and the close
DEFAULT_TIMEOUT = 10.0

#: what Starlette and FastAPI take as ``lifespan=``: web app -> async context manager
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class IvyLifespan:
    """The lifespan of one ivy app inside a web app: see :func:`lifespan`. Calling it with
    the web app gives the async context manager Starlette enters; :meth:`startup` and
    :meth:`shutdown` are its two halves, for frameworks that take them apart."""

    def __init__(self, app: Ivy, inner: Lifespan | None = None, *, notifier: Spec = None,
                 timeout: float = DEFAULT_TIMEOUT, close: bool = True) -> None:
        if not isinstance(app, Ivy):
            raise TypeError(f"lifespan() takes an ivy.Ivy app (or ivy.default), got {app!r}")
        if inner is not None and not callable(inner):
            raise TypeError(f"inner {inner!r} must be a lifespan: a callable taking the web app "
                            "and returning an async context manager")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"timeout {timeout!r} must be a number of seconds > 0: how "
                                     "long the shutdown may wait for the flush and the close")
        #: the ivy app this lifespan starts and closes
        self.app = app
        self.inner = inner
        self.notifier = notifier
        self.timeout = float(timeout)
        self.closes = close

    def __repr__(self) -> str:
        return f"<IvyLifespan {self.app!r} timeout={self.timeout:g}>"

    def __call__(self, web_app: Any) -> AbstractAsyncContextManager[Any]:
        """The async context manager of one run of ``web_app``: ivy starts on entry and
        closes on exit, around ``inner``'s own, whose state it yields."""
        return self._run(web_app)

    @asynccontextmanager
    async def _run(self, web_app: Any) -> AsyncIterator[Any]:
        await self.startup()
        try:
            if self.inner is None:
                yield None
            else:
                async with self.inner(web_app) as state:
                    yield state
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Start the ivy app's notification consumer (on ``notifier``, or the app's own), on a
        thread. Raises what starting raises: a server should not come up without it."""
        await asyncio.to_thread(self.app.start_notification_consumer, self.notifier)

    async def shutdown(self) -> None:
        """Flush what was sent, then close the ivy app (unless ``close=False``), within
        ``timeout`` seconds in all; logs what did not finish, raises nothing."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        deadline = time.monotonic() + self.timeout

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, finished)

        def work() -> None:
            try:
                self._flush_and_close(deadline)
            except Exception:
                log.exception("shutdown of %r raised", self.app)
            finally:
                done()

        threading.Thread(target=work, name="ivy-asgi-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(finished), self.timeout)
        except TimeoutError:
            log.warning("shutdown: %r did not %s within %g s; going on without waiting",
                        self.app, "flush and close" if self.closes else "flush", self.timeout)

    def _flush_and_close(self, deadline: float) -> None:
        try:
            self.app.flush(max(deadline - time.monotonic(), 0.0))
        except PublishTimeout as exc:
            log.warning("shutdown: %s", exc)
        except PublishError as exc:
            log.error("shutdown: %s", exc)
        if self.closes:
            self.app.close(timeout=max(deadline - time.monotonic(), 0.0))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def lifespan(app: Ivy, inner: Lifespan | None = None, *, notifier: Spec = None,
             timeout: float = DEFAULT_TIMEOUT, close: bool = True) -> IvyLifespan:
    """The lifespan of the ivy app ``app`` (``ivy.default`` for the module-level API), for
    ``Starlette(lifespan=...)`` and ``FastAPI(lifespan=...)``.

    On startup it starts ``app``'s notification consumer (on ``notifier``, default the app's
    own). On shutdown it flushes the messages sent so far and closes ``app`` (only flushes
    with ``close=False``), within ``timeout`` seconds in all. ``inner`` is a lifespan the web
    app already has: it runs inside this one, and its state is the web app's state. Or enter
    this one inside your own: ``async with lifespan(app)(web): yield``."""
    return IvyLifespan(app, inner, notifier=notifier, timeout=timeout, close=close)


__all__ = ["DEFAULT_TIMEOUT", "IvyLifespan", "Lifespan", "lifespan"]
