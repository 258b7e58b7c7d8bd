"""The statements of the PostgreSQL notifier (:mod:`ivy.notifiers.postgres`), for one schema, and
the names of its ``LISTEN/NOTIFY`` channels."""

from __future__ import annotations

import hashlib
from typing import LiteralString

from psycopg import sql

#: Seconds a running or progress notification is kept for a subscription that reconnects.
NOTIFICATIONS_TTL = 60.0
#: Seconds an event too long for its NOTIFY is kept in the ``events`` table.
EVENTS_TTL = 60.0
#: Expired rows of one table that one prune deletes, at most.
PRUNE_BATCH = 10_000
#: The longest event sent in its NOTIFY's payload (the server takes up to 7999 bytes).
INLINE_EVENT_BYTES = 7900


def notify_channel(schema: str, channel: str) -> str:
    """The ``LISTEN/NOTIFY`` channel of a producer's ``channel`` (``ivy:notify:<id>``) in
    ``schema``: ``ivy:`` and 40 hex digits of a hash of both, since a PostgreSQL channel name
    has at most 63 bytes and a producer's channel and a schema may have 75 and 50."""
    digest = hashlib.blake2b(f"{schema}\n{channel}".encode(), digest_size=20).hexdigest()
    return f"ivy:{digest}"


def events_channel(schema: str) -> str:
    """The ``LISTEN/NOTIFY`` channel of ``schema``'s task events."""
    return f"{schema}:events"


def prune_lock(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) that one pruning process of ``schema`` holds."""
    digest = hashlib.sha256(f"ivy.prune:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StoreStatements:
    """The notifier's statements on ``schema``, composed once (the schema is an identifier)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.events_channel = events_channel(schema)
        self.prune_lock = prune_lock(schema)

        def q(template: LiteralString) -> bytes:
            return sql.SQL(template).format(
                s=sql.Identifier(schema),
                notes_ttl=sql.Literal(NOTIFICATIONS_TTL), events_ttl=sql.Literal(EVENTS_TTL),
                batch=sql.Literal(PRUNE_BATCH)).as_bytes(None)

        # -- notifications: finals stored by key (first wins), the others for a minute
        self.publish_final = q(
            "SELECT {s}.publish_result(%(channel)s, %(key)s, %(beside)s, %(nonce)s, %(body)s, "
            "%(ttl)s)")
        self.publish_other = q(
            "WITH n AS (INSERT INTO {s}.notifications (channel, body) "
            "VALUES (%(channel)s, %(body)s) RETURNING seq) "
            "SELECT pg_notify(%(channel)s, 'n:' || seq) FROM n")
        #: the live finals of ``keys``: key, body
        self.stored = q("SELECT key, body FROM {s}.results WHERE key = ANY(%(keys)s::text[]) "
                        "AND expires_at > now()")
        #: what NOTIFY payloads name: ``r:<key>`` results, ``n:<seq>`` other notifications
        self.named = q(
            "SELECT 'r:' || key, body FROM {s}.results WHERE key = ANY(%(keys)s::text[]) "
            "UNION ALL SELECT 'n:' || seq, body FROM {s}.notifications "
            "WHERE seq = ANY(%(seqs)s::bigint[])")
        self.last_seq = q("SELECT coalesce(max(seq), 0) FROM {s}.notifications")
        #: the channel's notifications after seq ``after`` (a subscription that reconnects)
        self.since = q("SELECT seq, body FROM {s}.notifications WHERE channel = %(channel)s "
                       "AND seq > %(after)s ORDER BY seq")

        # -- task events: in the NOTIFY payload ("=<json>"), or stored ("#<seq>") if too long
        self.notify_many = q(
            "SELECT pg_notify(%(channel)s, t.p) FROM unnest(%(payloads)s::text[]) "
            "WITH ORDINALITY AS t(p, n) ORDER BY t.n")
        self.store_events = q(
            "INSERT INTO {s}.events (body) SELECT t.b FROM unnest(%(bodies)s::bytea[]) "
            "WITH ORDINALITY AS t(b, n) ORDER BY t.n RETURNING seq")
        self.events = q("SELECT seq, body FROM {s}.events WHERE seq = ANY(%(seqs)s::bigint[])")

        # -- worker heartbeats
        self.put_worker = q(
            "WITH gone AS (DELETE FROM {s}.workers WHERE expires_at <= now() "
            "AND name <> %(name)s) "
            "INSERT INTO {s}.workers (name, info, expires_at) VALUES (%(name)s, %(info)s, "
            "now() + make_interval(secs => %(ttl)s)) ON CONFLICT (name) DO UPDATE "
            "SET info = EXCLUDED.info, expires_at = EXCLUDED.expires_at")
        self.remove_worker = q("DELETE FROM {s}.workers WHERE name = %(name)s")
        self.workers = q("SELECT info FROM {s}.workers WHERE expires_at > now() ORDER BY name")

        # -- workflow store
        self.workflow_record = q(
            "SELECT stored, members FROM {s}.workflow_record(%(key)s, %(idx)s, %(value)s, "
            "%(ttl)s)")
        self.workflow_members = q(
            "SELECT m.idx, m.value FROM {s}.workflow_members AS m "
            "JOIN {s}.workflow_counts AS c ON c.key = m.key "
            "WHERE m.key = %(key)s AND c.expires_at > now()")

        # -- keys (schedule slots, unique sends, cancels, rate limits)
        # Set the key unless it holds a live value: whether this set it, and the value held
        # (NULL when set now, or when the holder committed after this statement began).
        self.claim_key = q(
            "WITH ins AS (INSERT INTO {s}.keys AS k (key, value, expires_at) "
            "VALUES (%(key)s, %(value)s, now() + make_interval(secs => %(ttl)s)) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
            "expires_at = EXCLUDED.expires_at WHERE k.expires_at <= now() RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM ins), (SELECT value FROM {s}.keys "
            "WHERE key = %(key)s AND expires_at > now())")
        self.get_keys = q("SELECT key, value FROM {s}.keys WHERE key = ANY(%(keys)s::text[]) "
                          "AND expires_at > now()")
        self.delete_key = q("DELETE FROM {s}.keys WHERE key = %(key)s AND value = %(value)s "
                            "AND expires_at > now()")
        self.keep_key = q(
            "UPDATE {s}.keys SET value = coalesce(%(new)s, value), "
            "expires_at = now() + make_interval(secs => %(ttl)s) "
            "WHERE key = %(key)s AND value = %(value)s AND expires_at > now()")
        self.extend_key = q(
            "UPDATE {s}.keys SET expires_at = greatest(expires_at, "
            "now() + make_interval(secs => %(ttl)s)) "
            "WHERE key = %(key)s AND value = %(value)s AND expires_at > now()")
        self.rate_slot = q(
            "SELECT {s}.rate_slot(%(key)s, %(interval)s, %(burst)s, %(hold)s, %(grace)s, "
            "%(early)s)")

        #: what has expired, a bounded batch of each table (several statements, no parameter)
        self.prune = q(
            "DELETE FROM {s}.results WHERE key IN (SELECT key FROM {s}.results "
            "WHERE expires_at <= now() LIMIT {batch}); "
            "DELETE FROM {s}.notifications WHERE created_at < now() - make_interval(secs => "
            "{notes_ttl}); "
            "DELETE FROM {s}.events WHERE created_at < now() - make_interval(secs => "
            "{events_ttl}); "
            "DELETE FROM {s}.keys WHERE key IN (SELECT key FROM {s}.keys "
            "WHERE expires_at <= now() LIMIT {batch}); "
            "DELETE FROM {s}.workers WHERE expires_at <= now(); "
            "WITH gone AS (DELETE FROM {s}.workflow_counts WHERE key IN (SELECT key FROM "
            "{s}.workflow_counts WHERE expires_at <= now() LIMIT {batch}) RETURNING key) "
            "DELETE FROM {s}.workflow_members WHERE key IN (SELECT key FROM gone)")
