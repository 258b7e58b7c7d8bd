"""Enqueue inside the application's own transaction (issue 24, part 2): ``send_task(...,
connection=conn)`` and ``with app.transaction(conn):`` on the PostgreSQL queue, with a
psycopg 3 connection of the test's own (sync and async)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for

import ivy

psycopg = pytest.importorskip("psycopg", reason="pip install 'ivy-queue[postgres]'")



def qname() -> str:
    return f"tx-{uuid.uuid4().hex[:10]}"


class Served:
    """An app on the test's PostgreSQL schema (SQLite notifier) with a worker running
    ``tx.add``, which records its runs."""

    def __init__(self, postgres_url: str, tmp_path: Path) -> None:
        self.queue = qname()
        self.app = ivy.Ivy(postgres_url, f"sqlite:///{tmp_path / 'n.db'}")
        self.runs: list[Any] = []

        @self.app.register_task(name="tx.add", queue=self.queue)
        def add(a: int, b: int) -> int:
            self.runs.append((a, b))
            return a + b

        self.add = add
        self.app.listen(queue=self.queue, block=False)

    def waiting(self) -> int:
        """Messages of the queue visible to other sessions (committed)."""
        return self.app.queue_backend.size(self.queue)


@pytest.fixture
def served(postgres_url: str, tmp_path: Path) -> Iterator[Served]:
    s = Served(postgres_url, tmp_path)
    yield s
    s.app.close()


@pytest.fixture
def orders(served: Served, pg_url: str, schema: str) -> str:
    """The application's own table, in the test's schema (made by ivy's migration)."""
    served.app.queue_backend.migrate()  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".orders (id int PRIMARY KEY)')
    return f'"{schema}".orders'


def test_a_call_sent_in_a_transaction_is_seen_only_when_it_commits(
        served: Served, pg_url: str, orders: str) -> None:
    with psycopg.connect(pg_url) as conn:  # not autocommit: a transaction is open
        # Given the application's own write and a call sent on the same connection
        conn.execute(f"INSERT INTO {orders} VALUES (1)")
        call = served.app.send_task(served.add, [1, 2], connection=conn)
        # Then, before the commit, nobody else sees the message, and it is not sent yet
        assert served.waiting() == 0
        with pytest.raises(ivy.PublishTimeout):
            call.sent(0.3)
        # and ivy.flush() does not wait for the caller's transaction
        served.app.flush(timeout=1)
        # When the application commits
        conn.commit()
    # Then the call is sent, runs, and both writes are there
    call.sent(10)
    assert call.result(30) == 3
    with psycopg.connect(pg_url) as check:
        assert check.execute(f"SELECT count(*) FROM {orders}").fetchone() == (1,)


def test_a_rollback_fails_the_calls_of_the_block_and_nothing_runs(
        served: Served, pg_url: str, orders: str) -> None:
    with psycopg.connect(pg_url) as conn:
        # Given several sends in a transaction block (a batch and a workflow too)
        with served.app.transaction(conn):
            conn.execute(f"INSERT INTO {orders} VALUES (2)")
            one = served.app.delayed_call(served.add, 2, 2)
            batch = served.app.delayed_calls(served.add, [(3, 3), (4, 4)])
            flow = served.app.send_task(ivy.chain(served.add.s(1, 1), served.add.s(5)))
        # When the application rolls back
        conn.rollback()
    # Then every call fails at once with TransactionRolledBack, and nothing ran
    for call in [one, *batch, flow]:
        with pytest.raises(ivy.TransactionRolledBack, match="rolled back"):
            call.result(10)
    assert served.waiting() == 0 and served.runs == []
    # and a call sent afterwards, outside any transaction, runs as usual
    assert served.app.delayed_call(served.add, 7, 7).result(30) == 14


def test_an_autocommit_connection_sends_at_once(served: Served, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        call = served.app.send_task(served.add, [5, 5], connection=conn)
        call.sent(1)
    assert call.result(30) == 10


def test_an_async_connection_writes_at_the_end_of_its_block(
        served: Served, pg_url: str, orders: str) -> None:
    async def main() -> tuple[list[ivy.Call[Any]], list[ivy.Call[Any]]]:
        async with await psycopg.AsyncConnection.connect(pg_url) as aconn:
            # Given a block that commits
            async with aconn.transaction(), served.app.transaction(aconn):
                await aconn.execute(f"INSERT INTO {orders} VALUES (3)")
                kept = [served.app.delayed_call(served.add, i, 1) for i in range(3)]
                assert served.waiting() == 0  # kept until the block ends
            # and one that raises
            dropped: list[ivy.Call[Any]] = []
            with pytest.raises(RuntimeError):
                async with aconn.transaction(), served.app.transaction(aconn):
                    dropped.append(served.app.delayed_call(served.add, 100, 1))
                    raise RuntimeError("the application's own failure")
        return kept, dropped

    kept, dropped = asyncio.run(main())
    # Then the committed block's calls run, the other's fail without being written
    assert [c.result(30) for c in kept] == [1, 2, 3]
    with pytest.raises(ivy.TransactionRolledBack, match="raised RuntimeError"):
        dropped[0].result(10)
    assert (100, 1) not in served.runs


def test_wrong_connections_and_backends_are_refused_with_the_fix(
        served: Served, pg_url: str, tmp_path: Path) -> None:
    # an asynchronous connection in a plain 'with', or in connection=
    async def with_async() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as aconn:
            with pytest.raises(ivy.ConfigurationError, match=r"async with app\.transaction"):
                served.app.send_task(served.add, [1, 1], connection=aconn)
            with pytest.raises(ivy.ConfigurationError, match="async with"), \
                    served.app.transaction(aconn):
                pass

    asyncio.run(with_async())
    # something that is not a psycopg connection
    with pytest.raises(ivy.ConfigurationError, match="not a psycopg 3 connection"):
        served.app.send_task(served.add, [1, 1], connection=object())
    # another queue backend
    other = ivy.Ivy(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        with psycopg.connect(pg_url) as conn, pytest.raises(
                ivy.ConfigurationError, match="only the PostgreSQL queue"):
            other.send_task("tx.add", [1, 1], queue="q", connection=conn)
    finally:
        other.close()
    assert served.runs == []


def test_a_connection_to_another_database_is_refused(served: Served, pg_url: str) -> None:
    name = f"ivy_tx_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        other_url = pg_url.rsplit("/", 1)[0] + f"/{name}"
        with psycopg.connect(other_url) as conn, pytest.raises(
                ivy.ConfigurationError, match=f"database {name!r}"):
            served.app.send_task(served.add, [1, 1], connection=conn)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_failed_transaction_is_a_publish_error_naming_the_server(
        served: Served, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        # the transaction is aborted: the message cannot be written in it
        with pytest.raises(ivy.PublishError, match=r"127\.0\.0\.1:5432"):
            served.app.send_task(served.add, [1, 1], connection=conn)
        conn.rollback()
    wait_for(lambda: served.app.pending_calls() == [], message="the failed call forgotten")
