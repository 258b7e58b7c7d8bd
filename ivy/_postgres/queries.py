"""The statements of the PostgreSQL queue, for one schema, and the insert that producers use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString

import psycopg
from psycopg import sql

#: (queue, body, priority, delay in seconds): one message to insert
Row = tuple[str, bytes, int, float]


def channel_name(schema: str) -> str:
    """The ``LISTEN/NOTIFY`` channel of ``schema``'s queue; each notification's payload is
    the name of a queue with a message due."""
    return f"{schema}:wake"


class Statements:
    """The queue's statements on ``schema``, composed once (the schema is an identifier)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.channel = channel_name(schema)

        def q(template: LiteralString) -> bytes:
            return sql.SQL(template).format(
                messages=sql.Identifier(schema, "messages"),
                dead=sql.Identifier(schema, "dead_letters")).as_bytes(None)

        self.insert = q(
            "WITH added AS (INSERT INTO {messages} (queue, body, priority, available_at) "
            "SELECT t.queue, t.body, t.priority, now() + make_interval(secs => t.delay) "
            "FROM unnest(%(queues)s::text[], %(bodies)s::bytea[], %(priorities)s::int[], "
            "%(delays)s::float8[]) WITH ORDINALITY AS t(queue, body, priority, delay, n) "
            "ORDER BY t.n RETURNING queue) "
            "SELECT pg_notify(%(channel)s, w.queue) FROM (SELECT DISTINCT queue FROM added) AS w")
        # Reserve up to `size` due rows: a lease (token, expiry) and one more delivery each.
        self.fetch = q(
            "WITH picked AS (SELECT id FROM {messages} WHERE queue = %(queue)s "
            "AND available_at <= now() ORDER BY priority DESC, id LIMIT %(size)s "
            "FOR UPDATE SKIP LOCKED) "
            "UPDATE {messages} AS m SET available_at = now() + make_interval(secs => %(lease)s), "
            "lease_token = %(token)s, deliveries = m.deliveries + 1 FROM picked "
            "WHERE m.id = picked.id RETURNING m.id, m.body, m.deliveries, m.priority")
        #: seconds until the next row of the queue falls due (a delay, a lease): NULL if none
        self.next_due = q(
            "SELECT extract(epoch FROM min(available_at) - now())::float8 FROM {messages} "
            "WHERE queue = %(queue)s")
        #: the acks of a batch: each row still leased under its token is deleted; the ids
        #: deleted come back (an ack whose lease ran out deletes nothing)
        self.ack = q(
            "DELETE FROM {messages} AS m USING unnest(%(ids)s::bigint[], %(tokens)s::text[]) "
            "AS a(id, token) WHERE m.id = a.id AND m.lease_token = a.token RETURNING m.id")
        self.extend = q(
            "UPDATE {messages} SET available_at = now() + make_interval(secs => %(seconds)s) "
            "WHERE id = %(id)s AND lease_token = %(token)s")
        # Put a row back, due in `delay` s: a retry (maybe a new body), or a defer or a
        # release, which take back the delivery (`uncount` 1).
        self.put_back = q(
            "WITH back AS (UPDATE {messages} SET body = coalesce(%(body)s, body), "
            "available_at = now() + make_interval(secs => %(delay)s), lease_token = NULL, "
            "deliveries = deliveries - %(uncount)s "
            "WHERE id = %(id)s AND lease_token = %(token)s RETURNING queue) "
            "SELECT pg_notify(%(channel)s, queue) FROM back")
        self.dead_letter = q(
            "WITH moved AS (DELETE FROM {messages} WHERE id = %(id)s "
            "AND lease_token = %(token)s RETURNING queue, body, priority, deliveries) "
            "INSERT INTO {dead} (queue, body, priority, reason, deliveries) "
            "SELECT queue, body, priority, %(reason)s, deliveries FROM moved RETURNING queue")
        #: the queue's oldest dead letters (a bounded batch) that expired
        self.expire_some = q(
            "DELETE FROM {dead} WHERE id IN (SELECT id FROM {dead} WHERE queue = %(queue)s "
            "ORDER BY id LIMIT %(limit)s) AND died_at < now() - make_interval(secs => %(ttl)s)")
        self.expire_all = q(
            "DELETE FROM {dead} WHERE queue = %(queue)s "
            "AND died_at < now() - make_interval(secs => %(ttl)s)")
        self.size = q("SELECT count(*) FROM {messages} WHERE queue = %(queue)s")
        #: seconds since the oldest due row became due (NULL: none is due)
        self.oldest_age = q(
            "SELECT extract(epoch FROM now() - min(available_at))::float8 FROM {messages} "
            "WHERE queue = %(queue)s AND available_at <= now()")
        self.dead_letters = q(
            "SELECT queue, body, reason, extract(epoch FROM died_at)::float8, id FROM {dead} "
            "WHERE queue = %(queue)s AND (%(ttl)s::float8 IS NULL "
            "OR died_at >= now() - make_interval(secs => %(ttl)s::float8)) "
            "ORDER BY id DESC LIMIT %(limit)s")
        self.take_dead = q(
            "DELETE FROM {dead} WHERE queue = %(queue)s RETURNING id, body, priority")
        self.take_dead_ids = q(
            "DELETE FROM {dead} WHERE queue = %(queue)s AND id = ANY(%(ids)s::bigint[]) "
            "RETURNING id, body, priority")
        self.purge_dead = q("DELETE FROM {dead} WHERE queue = %(queue)s")
        self.queues = q("SELECT queue FROM {messages} GROUP BY queue "
                        "UNION SELECT queue FROM {dead} GROUP BY queue")


#: the id of the current (top-level) transaction, as text (assigned now if it had none)
XID = b"SELECT pg_current_xact_id()::text"


def params(statements: Statements, rows: Sequence[Row]) -> dict[str, Any]:
    """The parameters of :attr:`Statements.insert` for ``rows``."""
    return {"queues": [r[0] for r in rows], "bodies": [r[1] for r in rows],
            "priorities": [r[2] for r in rows], "delays": [max(r[3], 0.0) for r in rows],
            "channel": statements.channel}


def insert(conn: psycopg.Connection[Any], statements: Statements, rows: Sequence[Row]) -> None:
    """Insert ``rows`` in one statement, in order, and notify their queues' consumers when
    the transaction of ``conn`` commits (at once in autocommit mode)."""
    if not rows:
        return
    conn.execute(statements.insert, params(statements, rows))
