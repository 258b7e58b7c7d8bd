"""ASGI applications (Starlette, FastAPI): :func:`lifespan` starts an ivy app with the web app and
flushes and closes it with it (docs/internals/integrations.md)."""

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
        """Make the lifespan; :func:`lifespan` does.

        Args:
            app: the ivy app (``ivy.default`` for the module-level API).
            inner: a lifespan the web app already has, run inside this one; None: none.
            notifier: the notifier the consumer starts on; None: the app's own.
            timeout: seconds the shutdown waits in all, for the flush and the close.
            close: close the app on shutdown (False: only flush it).

        Raises:
            TypeError: ``app`` is not an :class:`ivy.Ivy`, or ``inner`` is not callable.
            ivy.ConfigurationError: a ``timeout`` that is not a number of seconds > 0.
        """
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
        closes on exit, around ``inner``'s own, whose state it yields.

        Args:
            web_app: the Starlette or FastAPI app.

        Returns:
            The async context manager Starlette enters.
        """
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
        thread. Raises what starting raises: a server should not come up without it.

        Raises:
            ivy.ConfigurationError: a malformed notifier URL, or a notifier whose package is
                missing.
            ivy.IvyError: the app was closed.
        """
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
    this one inside your own: ``async with lifespan(app)(web): yield``.

    Args:
        app: the ivy app (``ivy.default`` for the module-level API).
        inner: a lifespan the web app already has, run inside this one; None: none.
        notifier: the notifier the consumer starts on; None: the app's own.
        timeout: seconds the shutdown waits in all, for the flush and the close.
        close: close the app on shutdown (False: only flush it).

    Returns:
        The lifespan: pass it as ``lifespan=``.

    Raises:
        TypeError: ``app`` is not an :class:`ivy.Ivy`, or ``inner`` is not callable.
        ivy.ConfigurationError: a ``timeout`` that is not a number of seconds > 0.
    """
    return IvyLifespan(app, inner, notifier=notifier, timeout=timeout, close=close)


__all__ = ["DEFAULT_TIMEOUT", "IvyLifespan", "Lifespan", "lifespan"]
