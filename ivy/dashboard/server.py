"""Running the dashboard with uvicorn: in the foreground for ``ivy dashboard``
(:func:`serve`), or on a thread for tests and embedding (:class:`Server`)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import uvicorn

from ivy._process import signal_handlers
from ivy.errors import IvyError

from .security import check_bind

#: seconds uvicorn waits for open connections (live streams) at shutdown
GRACEFUL_SHUTDOWN = 2


def _config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    # No access log: a ``?token=`` in a logged URL would leak the token.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                          access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
                          lifespan="on")


def serve(app: Any, host: str, port: int, *, token: str | None,
          log_level: str = "info") -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM (refusing an address other than
    loopback without ``token``)."""
    check_bind(host, token)
    server = uvicorn.Server(_config(app, host, port, log_level))
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the
    # handlers it found: these ignore it, so the command ends with exit 0 like the others.
    # A failed bind makes uvicorn log why and raise SystemExit: the IvyError below says it.
    with signal_handlers(lambda signum, frame: None), contextlib.suppress(SystemExit):
        server.run()
    if not server.started:
        raise IvyError(f"the dashboard could not listen on {host}:{port} (see the error "
                       "above; is the port in use? choose another with --port)")


class Server:
    """The dashboard served by uvicorn on a daemon thread; ``port=0`` picks a free port.
    ``with Server(app) as s: s.url``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, log_level: str = "warning") -> None:
        check_bind(host, token)
        self._server = uvicorn.Server(_config(app, host, port, log_level))
        self._thread = threading.Thread(target=self._server.run, name="ivy-dashboard",
                                        daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Server:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise IvyError(f"the dashboard did not start on {self.host}:{self.port} "
                               f"within {timeout} s")
            time.sleep(0.02)
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = sock.getsockname()[1]
                return self
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
