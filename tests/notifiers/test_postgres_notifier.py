"""PostgreSQL as the notifier (``postgresql://`` as a notifier URL), for real, on the shared
server: the notifier contract, first-wins results under races, their TTL, events too long for
a NOTIFY, migrations from the queue-only schema, a subscription whose connection the server
kills, URL options, an unreachable server, and apps and worker processes on PostgreSQL alone.
The store roles (keys, rate limits, workflows) run in tests/notifiers/test_timing_store.py,
tests/producer/test_workflows.py and tests/producer/test_ratelimit.py, and the API suites on
the "postgres" pairing of tests/conftest.py.

Each test has a schema of its own (dropped at the end) in the server's ``postgres``
database; the server is never restarted."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for, with_options
from contract import NotifierContract
from workers import killed_worker_task_completes_once, start_worker, stop_worker
from workers import producer_app as producer

import ivy
from ivy.config import make_notifier, make_queue_backend
from ivy.notifiers.base import Notifier

psycopg = pytest.importorskip("psycopg", reason="pip install 'ivy-queue[postgres]'")

from ivy._postgres import schema as pg_schema  # noqa: E402
from ivy._postgres.connection import ACCEPTED, PostgresError, PostgresUnavailable  # noqa: E402
from ivy.notifiers.postgres import PostgresNotifier, PostgresSubscription  # noqa: E402
from ivy.queues.postgres import PostgresQueueBackend  # noqa: E402


def pg_notifier(url: str) -> PostgresNotifier:
    notifier = make_notifier(url)
    assert isinstance(notifier, PostgresNotifier)
    return notifier


def channel() -> str:
    return f"ivy:notify:{uuid.uuid4().hex}"


def collect(sub: Any, count: int, timeout: float = 10) -> list[bytes]:
    """What ``sub`` receives until ``count`` bodies came (or ``timeout`` s passed)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(sub.get(0.5))
    return got


def alive(pg_url: str, pid: int | None) -> bool:
    """Whether the server has a connection of pid ``pid``."""
    if pid is None:
        return False
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                           [pid]).fetchone()
    return row is not None and row[0] == 1


def terminate(pg_url: str, pid: int | None) -> None:
    assert pid is not None
    with psycopg.connect(pg_url, autocommit=True) as conn:
        [(done,)] = conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchall()
    assert done


class TestPostgresNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, postgres_url: str) -> Iterator[Notifier]:
        made = pg_notifier(postgres_url)
        yield made
        made.close()


@pytest.fixture
def notifier(postgres_url: str) -> Iterator[PostgresNotifier]:
    made = pg_notifier(postgres_url)
    yield made
    made.close()


class Gate:
    """Holds back a subscription's reconnects: once armed, ``Database.connect`` waits until
    the gate opens, so that what is published meanwhile can only come by catching up."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self.armed = False
        self.waiting = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> Any:
        if self.armed:
            self.waiting.set()
            assert self.opened.wait(30), "the gate was never opened"
        return self._connect()


def test_a_killed_subscription_listens_again_and_catches_up(
        pg_url: str, notifier: PostgresNotifier, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a subscription with a call pending, listening on a connection of its own
    ch, call_id = channel(), uuid.uuid4().hex
    gate = Gate(notifier.db.connect)
    monkeypatch.setattr(notifier.db, "connect", gate)
    sub = notifier.subscribe(ch, lambda: [call_id])
    try:
        notifier.publish(ch, call_id, b"running", final=False)
        assert collect(sub, 1) == [b"running"]
        assert isinstance(sub, PostgresSubscription)
        before = sub.backend_pid
        assert alive(pg_url, before)
        # When the server ends that connection, and a progress and the result are published
        # before the subscription listens again
        gate.armed = True
        terminate(pg_url, before)
        assert gate.waiting.wait(15), "the subscription did not try to reconnect"
        notifier.publish(ch, call_id, b"progress", final=False)
        notifier.publish(ch, call_id, b"result", final=True)
        assert sub.get(0.2) == []
        gate.opened.set()
        # Then it listens again on a new connection and gets both, in order: nothing lost
        assert collect(sub, 2) == [b"progress", b"result"]
        assert sub.backend_pid not in (None, before) and alive(pg_url, sub.backend_pid)
        # and what comes next arrives by NOTIFY, once
        notifier.publish(ch, "next", b"next", final=True)
        assert collect(sub, 1) == [b"next"]
        assert sub.get(0.3) == []
    finally:
        gate.opened.set()
        sub.close()


def test_a_pending_call_gets_its_result_after_the_producer_connection_is_killed(
        pg_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an app on PostgreSQL alone with a call running on its worker
    app = ivy.Ivy(postgres_url, postgres_url)
    release = threading.Event()

    @app.register_task(name="pgn.slow", queue="q")
    def slow(n: int) -> int:
        assert release.wait(30)
        return n * 2

    try:
        app.listen(queue="q", concurrency=2, block=False)
        call = app.delayed_call(slow, 21)
        consumer = app.producer.results().current
        assert consumer is not None and isinstance(consumer.notifier, PostgresNotifier)
        notifier = consumer.notifier
        wait_for(lambda: isinstance(consumer._subscription, PostgresSubscription), timeout=15,
                 message="the producer's subscription")
        sub = consumer._subscription
        assert isinstance(sub, PostgresSubscription)
        before = sub.backend_pid
        gate = Gate(notifier.db.connect)
        monkeypatch.setattr(notifier.db, "connect", gate)
        # When the server kills the producer's listening connection, and the call finishes
        # while it is away
        gate.armed = True
        terminate(pg_url, before)
        assert gate.waiting.wait(15), "the subscription did not try to reconnect"
        release.set()
        wait_for(lambda: notifier.stored(call.id) is not None, timeout=15,
                 message="the result to be stored")
        assert not call.done()
        gate.opened.set()
        # Then the result still arrives, once the subscription listens again
        assert call.result(30) == 42
        assert sub.backend_pid not in (None, before)
    finally:
        release.set()
        app.close()


def test_an_app_and_its_worker_on_postgresql_alone(postgres_url: str, pg_url: str,
                                                   schema: str) -> None:
    # Given ivy.Ivy(pg, pg) with a worker in this process
    app = ivy.Ivy(postgres_url, postgres_url)

    @app.register_task(name="pgn.add", queue="q")
    def add(a: int, b: int) -> int:
        return a + b

    @app.register_task(name="pgn.fail", queue="q")
    def fail() -> None:
        raise ValueError("no")

    try:
        app.listen(queue="q", concurrency=4, block=False)
        # Then results and errors come back through PostgreSQL
        calls = [app.delayed_call(add, i, i) for i in range(50)]
        assert [c.result(30) for c in calls] == [2 * i for i in range(50)]
        with pytest.raises(ivy.RemoteTaskError, match="no"):
            app.delayed_call(fail).result(30)
        # and they are rows of the schema's results table, the worker's heartbeat too
        with psycopg.connect(pg_url, autocommit=True) as conn:
            count = conn.execute(f'SELECT count(*) FROM "{schema}".results').fetchone()
        assert count is not None and count[0] == 51
        reader = pg_notifier(postgres_url)
        try:
            wait_for(lambda: any(w.get("pid") == os.getpid() for w in reader.workers()),
                     timeout=15, message="the worker's heartbeat")
        finally:
            reader.close()
    finally:
        app.close()


@pytest.mark.slow
def test_killed_worker_process_task_completes_once(postgres_url: str, tmp_path: Path) -> None:
    # `ivy worker` processes on PostgreSQL alone, the first SIGKILLed mid-task
    url = with_options(postgres_url, poll_interval=0.2)
    app = producer(url, url)
    try:
        killed_worker_task_completes_once(
            app, lambda: start_worker(url, url, "--reserve-time", "2"), tmp_path)
    finally:
        app.close()


@pytest.mark.slow
def test_a_worker_process_publishes_events_and_heartbeats(postgres_url: str) -> None:
    # Given an events subscription and a worker process with events on
    notifier = pg_notifier(postgres_url)
    events = notifier.subscribe_events()
    app = producer(postgres_url, postgres_url)
    worker = start_worker(postgres_url, postgres_url, "--events")
    try:
        # When it runs a call
        assert app.delayed_call("proc.factorial", 5).result(30) == 120
        # Then its events reach the subscription, and its heartbeat the notifier
        got = b"".join(collect(events, 3))
        assert b'"succeeded"' in got and b'"proc.factorial"' in got
        wait_for(lambda: notifier.workers(), timeout=15, message="the worker's heartbeat")
    finally:
        stop_worker(worker)
        events.close()
        app.close()
        notifier.close()


def test_closing_waits_for_what_follows_each_stored_result(postgres_url: str) -> None:
    # Given a worker's final results handed to the notifier's writer, each followed by a slow
    # step (a worker's ack, which goes through the queue backend)
    made = pg_notifier(postgres_url)
    done: list[int] = []

    def then(i: int) -> Callable[[], None]:
        def ack() -> None:
            time.sleep(0.2)
            done.append(i)
        return ack

    for i in range(3):
        made.publish_then(channel(), f"call-{i}", b'{"ivy":1}', final=True, then=then(i))
    # When the notifier closes (the app closes its queue backend right after it)
    made.close()
    # Then every step after a stored result ran before close returned: none would find the
    # queue backend closed, and leave its message to come back when its lease ends
    assert done == [0, 1, 2]


def test_racing_finals_store_and_send_one_per_nonce(notifier: PostgresNotifier) -> None:
    # Given a subscriber, and eight threads that publish a final of one call at once: four
    # echo its nonce, four echo another
    ch, call_id = channel(), uuid.uuid4().hex
    sub = notifier.subscribe(ch, lambda: [])
    start = threading.Barrier(8)

    def publish(i: int) -> None:
        nonce = "aaaa" if i % 2 else "bbbb"
        start.wait()
        notifier.publish(ch, call_id, b'{"n": %d, "nonce": "%s"}' % (i, nonce.encode()),
                         final=True, nonce=nonce)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        # Then one of each nonce is stored and sent, no more
        got = collect(sub, 2)
        assert sub.get(0.3) == []
        assert len(got) == 2 and {b"aaaa" in g for g in got} == {True, False}
        first = notifier.stored(call_id)
        assert first in got
        assert {notifier.stored(call_id, "aaaa"), notifier.stored(call_id, "bbbb")} == set(got)
    finally:
        sub.close()


def test_results_expire_after_result_ttl_and_are_pruned(postgres_url: str, pg_url: str,
                                                        schema: str) -> None:
    # Given a notifier keeping results 1 s
    notifier = pg_notifier(with_options(postgres_url, result_ttl=1))
    try:
        assert notifier.result_ttl == 1.0
        call_id = uuid.uuid4().hex
        notifier.publish(channel(), call_id, b"short-lived", final=True)
        assert notifier.stored(call_id) == b"short-lived"
        # Then it is gone after its time, by the server's clock, and a new final may take
        # its place
        wait_for(lambda: notifier.stored(call_id) is None, timeout=10, interval=0.1,
                 message="the result to expire")
        notifier.publish(channel(), call_id, b"again", final=True)
        assert notifier.stored(call_id) == b"again"
        # and the next prune deletes what expired
        other = uuid.uuid4().hex
        notifier.publish(channel(), other, b"x", final=True)
        wait_for(lambda: notifier.stored(other) is None, timeout=10, interval=0.1,
                 message="the second result to expire")
        notifier._last_prune = 0.0
        notifier.publish(channel(), uuid.uuid4().hex, b"running", final=False)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            rows = conn.execute(f'SELECT key FROM "{schema}".results').fetchall()
        assert other not in {r[0] for r in rows}
    finally:
        notifier.close()


def test_events_too_long_for_a_notify_arrive_in_order(notifier: PostgresNotifier) -> None:
    # Given an events subscription
    sub = notifier.subscribe_events()
    try:
        # When small, long (over the 8000 bytes of a payload) and non-ASCII events go out
        sent = [b'{"n": 1}', b'{"n": 2, "pad": "' + b"x" * 20_000 + b'"}',
                '{"n": 3, "name": "caf\u00e9"}'.encode(), b'{"n": 4}']
        notifier.publish_events(sent)
        notifier.publish_event(b'{"n": 5}')
        # Then every one arrives whole, in order
        assert collect(sub, 5) == [*sent, b'{"n": 5}']
    finally:
        sub.close()


def test_the_notifier_upgrades_a_queue_only_schema(postgres_url: str, pg_url: str,
                                                   schema: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a schema made by the queue of step 1 (migration 1 only), holding a message
    with monkeypatch.context() as patched:
        patched.setattr(pg_schema, "MIGRATIONS", pg_schema.MIGRATIONS[:1])
        patched.setattr(pg_schema, "LATEST", 1)
        queue = make_queue_backend(postgres_url)
        assert isinstance(queue, PostgresQueueBackend)
        assert queue.migrate() == (1, [1])
        queue.publish("q", b"kept")
        queue.close()
    # When a notifier uses it
    notifier = pg_notifier(postgres_url)
    try:
        call_id = uuid.uuid4().hex
        notifier.publish(channel(), call_id, b"done", final=True)
        # Then migration 2 was applied, recorded, and the queue's message is still there
        assert notifier.stored(call_id) == b"done"
        assert notifier.migrate() == (pg_schema.LATEST, [])
        with psycopg.connect(pg_url, autocommit=True) as conn:
            versions = [r[0] for r in conn.execute(
                f'SELECT version FROM "{schema}".migrations ORDER BY version').fetchall()]
        assert versions == list(range(1, pg_schema.LATEST + 1))
        queue = make_queue_backend(postgres_url)
        assert queue.size("q") == 1
        queue.close()
    finally:
        notifier.close()


def test_one_url_names_the_queue_and_the_notifier_with_their_options(pg_url: str,
                                                                      schema: str) -> None:
    # Given a URL with the queue's options and the notifier's, both schemes
    for scheme in ("postgresql://", "postgres://"):
        url = with_options(pg_url.replace("postgresql://", scheme, 1), schema=schema,
                           max_deliveries=3, result_ttl=60, pool_size=2)
        queue, notifier = make_queue_backend(url), make_notifier(url)
        try:
            # Then each reads its own and ignores the other's
            assert isinstance(queue, PostgresQueueBackend) and queue.max_deliveries == 3
            assert isinstance(notifier, PostgresNotifier) and notifier.result_ttl == 60.0
            assert notifier.settings.schema == schema and notifier.settings.pool_size == 2
        finally:
            queue.close()
            notifier.close()
    # and the dict form's options win over the URL's
    made = make_notifier({"type": "postgresql", "url": with_options(pg_url, result_ttl=60),
                          "result_ttl": 5, "schema": schema})
    assert isinstance(made, PostgresNotifier) and made.result_ttl == 5.0
    assert made.settings.schema == schema
    made.close()


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://u:hunter2@127.0.0.1/db?result_tll=60", "result_tll"),
    ("postgres://u:hunter2@127.0.0.1/db?schema=x&reslt_ttl=1", "reslt_ttl"),
])
def test_a_notifier_option_typo_names_the_accepted_options(url: str, says: str) -> None:
    with pytest.raises(ivy.ConfigurationError) as raised:
        make_notifier(url)
    text = str(raised.value)
    assert says in text and ACCEPTED in text and "result_ttl" in ACCEPTED, text
    assert "hunter2" not in text


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_a_bad_result_ttl_names_itself_and_an_example(value: str) -> None:
    with pytest.raises(ivy.ConfigurationError, match="such as") as raised:
        make_notifier(f"postgresql://u:hunter2@127.0.0.1/db?result_ttl={value}")
    assert f"result_ttl={value!r}" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_an_unreachable_server_is_a_clear_error_within_the_timeout() -> None:
    # Given a notifier on a port where nothing listens
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = pg_notifier(f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres"
                           "?connect_timeout=2")
    try:
        # Then publishing, reading and subscribing fail in time, naming host and port
        started = time.monotonic()
        with pytest.raises(PostgresError, match=f"127.0.0.1:{port}") as raised:
            notifier.publish(channel(), "x", b"done", final=True)
        with pytest.raises(PostgresUnavailable, match=f"127.0.0.1:{port}"):
            notifier.subscribe(channel(), lambda: [])
        with pytest.raises(PostgresUnavailable, match=f"127.0.0.1:{port}"):
            notifier.claim_key("k", "v", 10)
        assert time.monotonic() - started < 15
        assert "hunter2" not in str(raised.value)
    finally:
        notifier.close()
