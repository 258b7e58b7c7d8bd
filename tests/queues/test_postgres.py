"""PostgreSQL as the queue (``postgresql://`` as a queue URL), for real, on the shared server:
the contract suite, URLs and their errors, migrations (``ivy migrate``), wake-ups by NOTIFY
and by polling, leases, the delivery limit, and apps and worker processes on it.

Each test has a schema of its own (dropped at the end) in the server's ``postgres``
database, so that tests run in parallel; the server is never restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from common import wait_for, with_options
from contract import QueueBackendContract, qname, take
from servers import free_port
from workers import killed_worker_task_completes_once, start_worker
from workers import producer_app as producer

import ivy
from ivy.config import make_queue_backend
from ivy.queues.base import QueueBackend

psycopg = pytest.importorskip("psycopg", reason="pip install 'ivy-queue[postgres]'")

from ivy._postgres.connection import ACCEPTED, PostgresUnavailable  # noqa: E402
from ivy._postgres.schema import LATEST, SchemaTooNew  # noqa: E402
from ivy.queues.postgres import PostgresQueueBackend  # noqa: E402


def pg_backend(url: str) -> PostgresQueueBackend:
    backend = make_queue_backend(url)
    assert isinstance(backend, PostgresQueueBackend)
    return backend


def ivy_command(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVY_")}
    return subprocess.run([sys.executable, "-m", "ivy", *argv], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture
def queue_url(postgres_url: str) -> str:
    """A queue URL on a schema of this test's own (conftest's ``pg_url``, ``schema``)."""
    return postgres_url


class TestPostgresQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, queue_url: str) -> Iterator[QueueBackend]:
        b = pg_backend(queue_url)
        yield b
        b.close()


def test_both_schemes_with_options_and_libpq_parameters(pg_url: str, schema: str) -> None:
    # Given the two schemes, ivy's options and a libpq parameter, as a URL and as a dict
    base = with_options(pg_url, schema=schema, target_session_attrs="read-write")
    urls = [with_options(base, max_deliveries=3, dead_letter_ttl="none", poll_interval=0.5,
                         pool_size=2),
            with_options(base.replace("postgresql://", "postgres://", 1), max_deliveries=3,
                         dead_letter_ttl="none", poll_interval=0.5, pool_size=2)]
    q = qname()
    for url in urls:
        backend = pg_backend(url)
        try:
            # Then ivy reads its options, and libpq gets only its own
            assert backend.max_deliveries == 3 and backend.dead_letter_ttl is None
            assert backend.settings.poll_interval == 0.5 and backend.settings.pool_size == 2
            assert backend.settings.schema == schema
            conninfo = backend.settings.conninfo
            assert "target_session_attrs=read-write" in conninfo
            for option in ("schema", "max_deliveries", "dead_letter_ttl", "poll_interval",
                           "pool_size"):
                assert option not in conninfo
            # and it works
            backend.publish(q, b"x")
        finally:
            backend.close()
    dict_form = make_queue_backend({"type": "postgresql", "url": pg_url, "schema": schema,
                                    "max_deliveries": 4})
    try:
        assert isinstance(dict_form, PostgresQueueBackend) and dict_form.max_deliveries == 4
        assert dict_form.size(q) == 2
    finally:
        dict_form.close()


def test_a_multi_host_url_goes_on_to_the_host_that_answers(pg_url: str, schema: str) -> None:
    # Given a URL whose first host does not answer
    dead = free_port()
    url = (f"postgresql://postgres@127.0.0.1:{dead},127.0.0.1:{urlsplit(pg_url).port or 5432}"
           f"/postgres?target_session_attrs=read-write&connect_timeout=3&schema={schema}")
    backend = pg_backend(url)
    try:
        assert backend.settings.where.startswith(f"127.0.0.1:{dead}, 127.0.0.1:")
        # Then libpq goes on to the second, and the queue works
        q = qname()
        backend.publish(q, b"over there")
        consumer = backend.consume(q)
        assert take(consumer, 1) == [b"over there"]
        consumer.close()
    finally:
        backend.close()


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://u:hunter2@127.0.0.1:notaport/db", "port 'notaport'"),
    ("postgresql://u:hunter2@127.0.0.1/db?no_such_parameter=1", "no_such_parameter"),
    ("postgresql://u:hunter2@h1,h2,h3/db?port=1,2", "3 hosts but 2 ports"),
    ("postgresql://u:hunter2@127.0.0.1/db?connect_timeout=soon", "connect_timeout"),
    ("postgresql:/127.0.0.1/db", "must start with postgresql://"),
])
def test_a_bad_url_shows_the_accepted_form(url: str, says: str) -> None:
    with pytest.raises(ivy.ConfigurationError) as raised:
        PostgresQueueBackend(url)
    text = str(raised.value)
    assert says in text and ACCEPTED in text, text
    assert "hunter2" not in text


@pytest.mark.parametrize(("option", "says"), [
    ("schema=Bad-Name", "schema='Bad-Name'"),
    ("max_deliveries=0", "max_deliveries=0"),
    ("dead_letter_ttl=-1", "dead_letter_ttl='-1'"),
    ("poll_interval=soon", "poll_interval='soon'"),
    ("pool_size=1.5", "pool_size='1.5'"),
])
def test_a_bad_option_names_itself_and_an_example(option: str, says: str) -> None:
    with pytest.raises(ivy.ConfigurationError, match="such as") as raised:
        make_queue_backend(f"postgresql://u:hunter2@127.0.0.1/db?{option}")
    assert says in str(raised.value) and "hunter2" not in str(raised.value)


def test_passwords_are_masked_in_url_and_repr() -> None:
    backend = PostgresQueueBackend("postgres://app:hunter2@db.example:5433/app?schema=jobs")
    try:  # nothing connects before the first use
        for text in (backend.url, repr(backend), repr(backend.settings)):
            assert "hunter2" not in text and "app:***@db.example:5433" in text, text
        assert backend.settings.where == "db.example:5433"
    finally:
        backend.close()


def test_an_unreachable_server_is_a_clear_error_within_the_timeout() -> None:
    # Given a server address where nothing listens
    port = free_port()
    backend = pg_backend(f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres"
                         "?connect_timeout=2")
    try:
        # When a message is published: a PublishError naming host and port, in time
        started = time.monotonic()
        with pytest.raises(ivy.PublishError, match=f"127.0.0.1:{port}") as raised:
            backend.publish("q", b"lost?")
        assert time.monotonic() - started < 10
        assert "hunter2" not in str(raised.value)
        # and the same for an asynchronous send, and for reads
        [future] = backend.send_many("q", [b"lost?"])
        assert isinstance(future.exception(timeout=10), ivy.PublishError)
        with pytest.raises(PostgresUnavailable, match=f"127.0.0.1:{port}.*connect_timeout=2"):
            backend.size("q")
        # and the CLI says so in one line
        out = ivy_command("dead", "list", "--queue", "q", "--queue-url",
                          f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=2")
        assert out.returncode != 0 and f"127.0.0.1:{port}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    finally:
        backend.close()


def migrations(pg_url: str, schema: str) -> list[int]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".migrations ORDER BY version')
        return [row[0] for row in rows.fetchall()]


def test_first_use_migrates_and_records_the_version(pg_url: str, queue_url: str,
                                                    schema: str) -> None:
    backend = pg_backend(queue_url)
    try:
        assert backend.size("q") == 0  # the first use creates the schema
        assert migrations(pg_url, schema) == list(range(1, LATEST + 1))
        assert backend.migrate() == (LATEST, [])
    finally:
        backend.close()


def test_ivy_migrate_run_at_once_by_several_processes_migrates_once(
        pg_url: str, queue_url: str, schema: str) -> None:
    # Given three `ivy migrate` started together on a new schema
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVY_")}
    runs = [subprocess.Popen([sys.executable, "-m", "ivy", "migrate", "--queue-url",
                              queue_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(3)]
    outputs = [run.communicate(timeout=60) for run in runs]
    # Then each succeeds, one applied the migrations, and each version is recorded once
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    said = sorted(out for out, _ in outputs)
    assert sum(f"migrated to version {LATEST}" in out for out in said) == 1, said
    assert sum(f"already at version {LATEST}" in out for out in said) == 2, said
    assert migrations(pg_url, schema) == list(range(1, LATEST + 1))
    # and `ivy migrate` refuses a backend that has no schema
    out = ivy_command("migrate", "--queue-url", "memory://x")
    assert out.returncode == 2 and "postgresql://" in out.stderr, out.stderr


def test_a_schema_newer_than_this_ivy_is_refused(pg_url: str, queue_url: str,
                                                 schema: str) -> None:
    # Given a schema that a newer ivy migrated
    assert ivy_command("migrate", "--queue-url", queue_url).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".migrations (version, description) '
                     "VALUES (%s, 'from the future')", [LATEST + 1])
    # Then this ivy refuses it, saying why and what to do
    backend = pg_backend(queue_url)
    try:
        with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}, newer.*pip install -U"):
            backend.size("q")
        with pytest.raises(SchemaTooNew):
            backend.publish("q", b"x")
    finally:
        backend.close()
    out = ivy_command("migrate", "--queue-url", queue_url)
    assert out.returncode == 2 and "newer than this ivy knows" in out.stderr, out.stderr


def blocked_get(backend: PostgresQueueBackend, q: str) -> tuple[threading.Thread, list[float]]:
    """A thread whose consumer waits in get() on ``q`` (returned once it waits); the time it
    got a message goes to the list."""
    got: list[float] = []
    consumer = backend.consume(q)

    def get() -> None:
        delivery = consumer.get(30)
        if delivery is not None:
            got.append(time.monotonic())
            delivery.ack()
        consumer.close()

    thread = threading.Thread(target=get)
    thread.start()
    wait_for(backend.wakeups.listening.is_set, timeout=15, message="the listener")
    wait_for(lambda: backend.wakeups.waiting(q) == 1, timeout=15,
             message="the consumer to wait")
    return thread, got


def test_notify_wakes_a_waiting_consumer_long_before_its_poll(queue_url: str) -> None:
    # Given a consumer that polls every 20 s, waiting in get()
    worker = pg_backend(with_options(queue_url, poll_interval=20))
    producer_backend = pg_backend(queue_url)
    q = qname()
    try:
        thread, got = blocked_get(worker, q)
        # When another backend (another process, say) publishes
        sent = time.monotonic()
        producer_backend.publish(q, b"wake up")
        thread.join(30)
        # Then the NOTIFY of its commit wakes the consumer at once
        assert got, "the consumer got nothing"
        assert got[0] - sent < 2.0, got[0] - sent
    finally:
        worker.close()
        producer_backend.close()


def listener_pids(pg_url: str, schema: str) -> list[int]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE query = %s",
                            [f'LISTEN "{schema}:wake"']).fetchall()
    return [row[0] for row in rows]


def test_the_listener_listens_again_after_its_connection_is_killed(
        pg_url: str, queue_url: str, schema: str) -> None:
    # Given a listening backend whose consumers poll every 20 s
    worker = pg_backend(with_options(queue_url, poll_interval=20))
    producer_backend = pg_backend(queue_url)
    q = qname()
    try:
        worker.wakeups.start()
        wait_for(lambda: len(listener_pids(pg_url, schema)) == 1, timeout=15,
                 message="the listener's connection")
        [before] = listener_pids(pg_url, schema)
        # When the server ends the listener's connection
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", [before])
        # Then it listens again on a new one, and a notification wakes a consumer at once
        wait_for(lambda: [p for p in listener_pids(pg_url, schema) if p != before],
                 timeout=15, message="a new listener connection")
        thread, got = blocked_get(worker, q)
        sent = time.monotonic()
        producer_backend.publish(q, b"still there")
        thread.join(30)
        assert got and got[0] - sent < 2.0, got
    finally:
        worker.close()
        producer_backend.close()


def test_a_lost_notification_costs_at_most_the_poll_interval(pg_url: str,
                                                             queue_url: str,
                                                             schema: str) -> None:
    # Given a consumer that polls every 0.5 s, waiting in get()
    backend = pg_backend(with_options(queue_url, poll_interval=0.5))
    q = qname()
    try:
        thread, got = blocked_get(backend, q)
        # When a message arrives without a notification
        with psycopg.connect(pg_url, autocommit=True) as conn:
            sent = time.monotonic()
            conn.execute(f'INSERT INTO "{schema}".messages (queue, body, available_at) '
                         "VALUES (%s, 'quiet', now())", [q])
        thread.join(30)
        # Then the consumer's next poll finds it
        assert got, "the consumer got nothing"
        assert got[0] - sent < 3.0, got[0] - sent
    finally:
        backend.close()


def test_lost_leases_come_back_and_the_delivery_limit_dead_letters(queue_url: str,
                                                                   tmp_path: Path) -> None:
    # Given a call whose leases ran out twice without an outcome (its workers hung), and
    # max_deliveries=2
    q = qname()
    app = ivy.Ivy(with_options(queue_url, max_deliveries=2), f"sqlite:///{tmp_path / 'n.db'}")
    runs: list[int] = []

    @app.register_task(name="pg.poison", queue=q)
    def poison() -> None:
        runs.append(1)

    backend = app.queue_backend
    try:
        call = app.delayed_call(poison)
        call.sent(10)
        hung = backend.consume(q, reserve_time=0.3)
        for count in (1, 2):
            delivery = hung.get(10)  # the second comes back when the first lease ends
            assert delivery is not None and delivery.delivery_count == count
        hung.close()
        # When a worker takes it a third time
        app.listen(queue=q, block=False)
        # Then it dead-letters it without running it, and the producer hears why
        with pytest.raises(ivy.RemoteTaskError, match="delivery limit"):
            call.result(30)
        assert runs == []
        wait_for(lambda: backend.dead_letters(q), message="the dead letter")
        [dead] = backend.dead_letters(q)
        assert dead.reason.startswith("delivery limit")
        assert backend.size(q) == 0
    finally:
        app.close()


def test_acks_go_in_batches_and_an_ack_after_its_lease_deletes_nothing(
        queue_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given five messages leased by one consumer, the fifth's lease run out and taken again
    q = qname()
    backend = pg_backend(queue_url)
    try:
        backend.publish_many(q, [b"%d" % i for i in range(5)])
        first = backend.consume(q, prefetch=5, reserve_time=0.5)
        held = [first.get(10) for _ in range(5)]
        assert all(d is not None for d in held)
        late = held.pop()
        for delivery in held:
            delivery.extend(60)  # type: ignore[union-attr]
        again = backend.consume(q, prefetch=1)
        retaken = again.get(10)  # once the lease of the fifth ran out
        assert retaken is not None and retaken.body == late.body  # type: ignore[union-attr]
        batches: list[int] = []
        real = backend.acker._write

        def write(batch: list[object]) -> None:
            batches.append(len(batch))
            real(batch)  # type: ignore[arg-type]

        backend.acker._write = write  # type: ignore[method-assign]
        # When the first consumer acks all five, the late one among them
        with caplog.at_level("WARNING", logger="ivy.postgres"):
            for delivery in [*held, late]:
                delivery.ack()  # type: ignore[union-attr]
            # Then the acks return at once and are written together (one statement, or a
            # few when the thread starts on the first before the others came)
            assert backend.acker.flush(10)
        assert 1 <= len(batches) <= 5 and sum(batches) == 5
        # And the four rows are gone, while the retaken one is still leased to the other
        assert backend.size(q) == 1
        assert "skipped: its lease ran out" in caplog.text
        retaken.ack()  # type: ignore[union-attr]
        assert backend.size(q) == 0  # size() waits for the acks handed over before it
        first.close()
        again.close()
    finally:
        backend.close()


def test_an_app_on_postgresql_with_a_sqlite_notifier(queue_url: str, tmp_path: Path) -> None:
    # Given an app whose queue is PostgreSQL and whose notifier is SQLite, with a worker
    q = qname()
    app = ivy.Ivy(queue_url, f"sqlite:///{tmp_path / 'n.db'}")

    @app.register_task(name="pg.add", queue=q)
    def add(a: int, b: int) -> int:
        return a + b

    try:
        app.listen(queue=q, concurrency=2, block=False)
        # Then calls, delayed and prioritized ones too, run and return their results
        calls = [app.delayed_call(add, i, i) for i in range(20)]
        later = app.send_task(add, [1, 1], delay=0.3)
        urgent = app.send_task(add, [2, 2], priority=9)
        assert [c.result(30) for c in calls] == [2 * i for i in range(20)]
        assert later.result(30) == 2 and urgent.result(30) == 4
        wait_for(lambda: app.queue_backend.size(q) == 0, message="every ack")
    finally:
        app.close()


def test_ivy_dead_commands_work_on_postgresql(queue_url: str) -> None:
    # Given a dead letter
    backend = pg_backend(queue_url)
    q = qname()
    try:
        backend.publish(q, b'{"not": "a call"}')
        consumer = backend.consume(q)
        delivery = consumer.get(10)
        assert delivery is not None
        delivery.dead_letter("bad input")
        consumer.close()
        [dead] = backend.dead_letters(q)
        # Then `ivy dead` lists, requeues and purges it
        listed = ivy_command("dead", "list", "--queue", q, "--queue-url", queue_url)
        assert listed.returncode == 0 and "bad input" in listed.stdout, listed
        requeued = ivy_command("dead", "requeue", dead.id, "--queue", q, "--queue-url",
                               queue_url)
        assert requeued.returncode == 0, requeued
        assert backend.size(q) == 1 and backend.dead_letters(q) == []
    finally:
        backend.close()


@pytest.mark.slow
def test_killed_worker_process_task_completes_once(queue_url: str, tmp_path: Path) -> None:
    # `ivy worker` processes on PostgreSQL, the first SIGKILLed mid-task
    notifier = f"sqlite:///{tmp_path / 'n.db'}"
    url = with_options(queue_url, poll_interval=0.2)
    app = producer(url, notifier)
    try:
        killed_worker_task_completes_once(
            app, lambda: start_worker(url, notifier, "--reserve-time", "2"), tmp_path)
    finally:
        app.close()
