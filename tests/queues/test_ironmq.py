"""IronMQ through the real iron-mq client against the fake IronMQ v3 server in
tests/support/fake_ironmq.py: the contract suite, timeouts and connection reuse of the wrapped
client, a killed worker whose reservation expires, raw bad messages, the Node.js ivy 0.2 form."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from contract import QueueBackendContract
from fake_ironmq import FakeIronMQ
from workers import killed_worker_task_completes_once, start_worker

import ivy
from ivy.queues.base import QueueBackend

pytest.importorskip("iron_mq")


@pytest.fixture(autouse=True)
def isolated_iron_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The iron client reads ~/.iron.json, ./iron.json and IRON_* variables: keep them out."""
    for key in list(os.environ):
        if key.startswith("IRON_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeIronMQ]:
    server = FakeIronMQ().start()
    yield server
    server.stop()


def config(fake: FakeIronMQ, **extra: Any) -> dict[str, Any]:
    return {"type": "ironmq", "auth": {"token": fake.token, "project_id": fake.project_id},
            "host": fake.host, "port": fake.port, "protocol": "http", "min_reserve": 0,
            **extra}


def make_backend(fake: FakeIronMQ, **extra: Any) -> Any:
    from ivy.config import make_queue_backend

    return make_queue_backend(config(fake, **extra))


class TestIronMQQueue(QueueBackendContract):
    short = 1.0  # IronMQ counts delays in whole seconds
    retry_replaces_body = False  # a retry releases the reserved message with a delay
    deletes_expired_dead_letters = False  # IronMQ's message_expiration does, later

    @pytest.fixture
    def backend(self, fake: FakeIronMQ) -> Iterator[QueueBackend]:
        b = make_backend(fake)
        yield b
        b.close()



def test_wrong_token_is_refused(fake: FakeIronMQ) -> None:
    import requests

    backend = make_backend(fake, auth={"token": "wrong", "project_id": fake.project_id})
    with pytest.raises(requests.HTTPError, match="401"):
        backend.publish("q", b"{}")


def test_every_request_has_a_timeout() -> None:
    # Given a server that accepts connections and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    from ivy.queues.ironmq import IronMQQueueBackend

    backend = IronMQQueueBackend(token="t", project_id="p", host="127.0.0.1", port=port,
                                 protocol="http", request_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"timed out|Timeout"):
        backend.publish("q", b"{}")
    assert time.monotonic() - started < 5
    silent.close()


def test_connections_are_reused(fake: FakeIronMQ) -> None:
    connections: list[int] = []
    handler = fake.server.RequestHandlerClass
    original = handler.setup

    def counting_setup(self: Any) -> None:
        connections.append(1)
        original(self)

    handler.setup = counting_setup  # type: ignore[method-assign]
    try:
        backend = make_backend(fake)
        for i in range(20):
            backend.publish("reuse", f'{{"i":{i}}}'.encode())
        assert backend.size("reuse") == 20
        assert len(connections) <= 2
    finally:
        handler.setup = original  # type: ignore[method-assign]


def test_api_bad_messages_and_node_ivy_message(fake: FakeIronMQ) -> None:
    backend = make_backend(fake)
    q = f"q{uuid.uuid4().hex[:8]}"
    app = ivy.Ivy(backend, f"memory://{uuid.uuid4().hex}", retry_base_delay=0.3)
    runs: list[int] = []

    @app.register_task(name="factorial", queue=q)  # the original example's name
    def factorial(n: int) -> int:
        runs.append(n)
        return 1 if n <= 1 else n * factorial.func(n - 1)

    app.listen(queue=q, block=False, concurrency=2)
    assert app.delayed_call(factorial, 5).result(20) == 120
    # raw messages posted with the iron-mq client itself
    client_queue = backend.queue(q)
    bad = {"{not json": "is not valid json",
           json.dumps({"ivy": 1, "id": "a", "name": "nope", "args": []}): "unknown task 'nope'",
           json.dumps({"ivy": 1, "id": "b", "name": "factorial", "args": [1, 2]}):
               "wrong arguments for task 'factorial'"}
    for body in bad:
        client_queue.post({"body": body})
    client_queue.post({"body": '{"name":"factorial","options":{},"args":[3]}'})  # Node.js ivy
    wait_for(lambda: len(backend.dead_letters(q)) == 3, timeout=20, message="3 dead letters")
    reasons = {d.body.decode(): d.reason for d in backend.dead_letters(q)}
    for body, reason in bad.items():
        assert reason in reasons[body]
    wait_for(lambda: 3 in runs, message="the Node.js ivy 0.2 message to run")
    assert app.delayed_call(factorial, 4).result(20) == 24
    app.close()


@pytest.mark.slow
def test_killed_worker_reservation_expires_and_task_completes_once(
    fake: FakeIronMQ, tmp_path: Path
) -> None:
    # A bare ironmq:// reads the IRON_* variables, as the iron-mq client does.
    env = {**os.environ, "IRON_TOKEN": fake.token, "IRON_PROJECT_ID": fake.project_id,
           "IRON_MQ_HOST": fake.host, "IRON_MQ_PORT": str(fake.port),
           "IRON_MQ_PROTOCOL": "http"}
    notifier = f"sqlite:///{tmp_path / 'n.db'}"

    backend = make_backend(fake)
    app = ivy.Ivy(backend, notifier)
    try:
        killed_worker_task_completes_once(
            app, lambda: start_worker("ironmq://?min_reserve=0", notifier, env=env), tmp_path)
    finally:
        app.close()


def test_bare_url_reads_iron_json(fake: FakeIronMQ, tmp_path: Path) -> None:
    # the fixture made tmp_path the working directory, where the client looks for iron.json
    (tmp_path / "iron.json").write_text(json.dumps({
        "token": fake.token, "project_id": fake.project_id, "host": fake.host,
        "port": fake.port, "protocol": "http"}))
    from ivy.config import make_queue_backend

    backend = make_queue_backend("ironmq://?min_reserve=0")
    backend.publish("from-iron-json", b"{}")
    assert backend.size("from-iron-json") == 1


def test_missing_configuration_is_a_clear_error() -> None:
    from ivy.config import make_queue_backend

    with pytest.raises(ivy.ConfigurationError, match="IRON_TOKEN and IRON_PROJECT_ID"):
        make_queue_backend("ironmq://")


def test_response_without_content_type_is_read() -> None:
    # iron_core raises KeyError on such a response; the wrapped client reads it as text
    import http.server

    class NoType(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoType)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from ivy.queues.ironmq import IronMQQueueBackend

    backend = IronMQQueueBackend(token="t", project_id="p", host="127.0.0.1",
                                 port=server.server_address[1], protocol="http")
    assert backend.mq.client.get("queues/x")["body"] == "ok"
    server.shutdown()


@pytest.fixture
def slow_touch() -> Iterator[FakeIronMQ]:
    """A fake of its own whose touch answers 0.3 s after it handed out the new reservation id,
    the window in which a delete with the old id would be refused."""
    server = FakeIronMQ()
    route = server.route

    def delayed(method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = route(method, path, body)
        if path.split("?")[0].endswith("/touch"):
            time.sleep(0.3)
        return answer

    server.route = delayed  # type: ignore[method-assign]
    server.start()
    yield server
    server.stop()


def test_ack_during_a_touch_uses_the_new_reservation(
    slow_touch: FakeIronMQ, caplog: pytest.LogCaptureFixture
) -> None:
    # Given tasks that end while the heartbeat's touch of their message is on its way back
    backend = make_backend(slow_touch)
    q = f"q{uuid.uuid4().hex[:8]}"
    app = ivy.Ivy(backend, f"memory://{uuid.uuid4().hex}")
    runs: list[int] = []

    @app.register_task(name="t.touched", queue=q)
    def touched(i: int) -> int:
        runs.append(i)
        time.sleep(0.3)  # the first touch goes out 0.2 s in, and answers at 0.5 s
        return i

    worker = app.listen(queue=q, block=False, concurrency=1, reserve_time=0.6)
    try:
        # When each is acknowledged
        assert [app.delayed_call(touched, i).result(20) for i in range(3)] == [0, 1, 2]
        # Then the delete used the touch's new reservation: nothing is left to run again
        wait_for(lambda: backend.size(q) == 0, timeout=10, message="every delete")
        assert runs == [0, 1, 2]
        assert "reservation ran out" not in caplog.text
    finally:
        worker.stop(10)
        app.close()


def test_close_ends_every_thread_session() -> None:
    # Given a fake of its own that counts open connections
    server = FakeIronMQ()
    handler = server.server.RequestHandlerClass
    open_connections: list[int] = []
    setup, finish = handler.setup, handler.finish

    def counting_setup(self: Any) -> None:
        open_connections.append(1)
        setup(self)

    def counting_finish(self: Any) -> None:
        finish(self)
        open_connections.pop()

    handler.setup = counting_setup  # type: ignore[method-assign]
    handler.finish = counting_finish  # type: ignore[method-assign]
    server.start()
    try:
        # and a backend that used it from 3 threads (3 sessions, 3 kept-alive connections)
        backend = make_backend(server)
        threads = [threading.Thread(target=backend.publish, args=("s", b"{}")) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert backend.size("s") == 3
        wait_for(lambda: len(open_connections) == 4, message="4 open connections")
        # When the backend is closed, Then every connection is closed
        backend.close()
        wait_for(lambda: not open_connections, timeout=10, message="the connections to close")
    finally:
        server.stop()
