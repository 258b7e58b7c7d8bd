"""PostgreSQL faults (issue 24, part 4), on a private cluster of the test's own (the shared
server on 5432 is never restarted): every connection killed by the server, and a restart
mid-run. Producers, workers and the notification consumer reconnect, and no call is lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from common import wait_for
from servers import PrivatePostgres

import ivy

psycopg = pytest.importorskip("psycopg", reason="pip install 'ivy-queue[postgres]'")


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.remove()


class Served:
    """An app on the private server (queue and notifier) with a worker of four threads
    running ``f.echo``; ``runs`` counts each call's runs."""

    def __init__(self, url: str) -> None:
        self.queue = f"faults-{uuid.uuid4().hex[:8]}"
        self.app = ivy.Ivy(url, url, retry_base_delay=0.05, retry_max_delay=0.2)
        self.runs: dict[int, int] = {}
        self._lock = threading.Lock()

        @self.app.register_task(name="f.echo", queue=self.queue)
        def echo(n: int) -> int:
            with self._lock:
                self.runs[n] = self.runs.get(n, 0) + 1
            return n

        self.echo = echo
        self.app.listen(queue=self.queue, concurrency=4, block=False)

    def send(self, numbers: range) -> list[ivy.Call[int]]:
        return [self.app.delayed_call(self.echo, n) for n in numbers]


def test_connections_killed_by_the_server_lose_nothing(server: PrivatePostgres) -> None:
    served = Served(server.url)
    try:
        first = served.send(range(50))
        assert [c.result(30) for c in first[:5]] == [0, 1, 2, 3, 4]
        # When the server terminates every connection: pool, listeners, subscriptions
        assert server.terminate_connections() > 0
        later = served.send(range(50, 100))
        # Then every call completes with its own result
        assert [c.result(60) for c in first + later] == list(range(100))
        assert set(served.runs) == set(range(100))
    finally:
        served.app.close()


def test_a_restart_mid_run_loses_no_call(server: PrivatePostgres) -> None:
    served = Served(server.url)
    try:
        before = served.send(range(100))
        wait_for(lambda: len(served.runs) >= 10, timeout=30, message="some calls to run")
        # When the server restarts while calls are queued and running
        server.restart()
        after = served.send(range(100, 150))
        # Then every call sent before or after completes, each result its own
        assert [c.result(60) for c in before + after] == list(range(150))
        assert set(served.runs) == set(range(150))
    finally:
        served.app.close()


def test_a_send_while_the_server_is_down_fails_naming_it(server: PrivatePostgres) -> None:
    served = Served(f"{server.url}?publish_timeout=1")
    try:
        assert served.send(range(1))[0].result(30) == 0
        server.stop()
        # it keeps trying for publish_timeout s, then fails loudly: within that bound, not
        # after the connection pool's own wait (15 s) on each try
        started = time.monotonic()
        with pytest.raises(ivy.PublishError, match=f"127.0.0.1:{server.port}"):
            served.app.send_task(served.echo, [7], confirm=True)
        elapsed = time.monotonic() - started
        assert elapsed < 8, f"the send failed after {elapsed:.1f} s"
        server.start()
        # and once it is back, sends and results flow again
        assert served.send(range(8, 10))[1].result(60) == 9
    finally:
        served.app.close()


def test_a_send_during_a_restart_waits_for_the_server(server: PrivatePostgres) -> None:
    # Given a server that stops, and starts again half a second later
    served = Served(server.url)
    try:
        assert served.send(range(1))[0].result(30) == 0
        server.stop()
        restarter = threading.Timer(0.5, server.start)
        restarter.start()
        # When a call is sent meanwhile: it is written once the server is back, not failed
        call = served.app.send_task(served.echo, [5], confirm=True)
        restarter.join()
        assert call.result(60) == 5
    finally:
        served.app.close()
