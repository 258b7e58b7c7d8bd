"""The tables of ivy's schema and their versioned migrations: each is applied once, in order,
in one transaction under an advisory lock, and recorded in ``<schema>.migrations``."""

from __future__ import annotations

import hashlib
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from ivy.errors import ConfigurationError

#: The migrations, in order: version N is ``MIGRATIONS[N - 1]``, a description and its
#: statements (``{schema}`` is the quoted schema name). Append; never edit a released one.
MIGRATIONS: list[tuple[str, list[LiteralString]]] = [
    ("queue tables: messages and dead letters", [
        """CREATE TABLE {schema}.messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            queue text NOT NULL,
            body bytea NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            available_at timestamptz NOT NULL,
            lease_token text,
            deliveries integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now()
        ) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                autovacuum_analyze_scale_factor = 0.02)""",
        "CREATE INDEX messages_fetch ON {schema}.messages (queue, priority DESC, id)",
        "CREATE INDEX messages_due ON {schema}.messages (queue, available_at)",
        """CREATE TABLE {schema}.dead_letters (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            queue text NOT NULL,
            body bytea NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            reason text NOT NULL,
            deliveries integer NOT NULL DEFAULT 0,
            died_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX dead_letters_queue ON {schema}.dead_letters (queue, id)",
    ]),
    ("notifier tables: results, notifications, events, keys, workers and workflows", [
        # final notifications by call id (or beside it: "<call id>:<nonce>"), first wins
        """CREATE TABLE {schema}.results (
            key text PRIMARY KEY,
            body bytea NOT NULL,
            expires_at timestamptz NOT NULL
        ) WITH (autovacuum_vacuum_scale_factor = 0.05)""",
        "CREATE INDEX results_expiry ON {schema}.results (expires_at)",
        # running and progress notifications, kept a minute for subscriptions that reconnect
        """CREATE TABLE {schema}.notifications (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            channel text NOT NULL,
            body bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        ) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000)""",
        "CREATE INDEX notifications_channel ON {schema}.notifications (channel, seq)",
        # task events too long to ride in their NOTIFY, kept a minute
        """CREATE TABLE {schema}.events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            body bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE {schema}.keys (
            key text PRIMARY KEY,
            value text NOT NULL,
            expires_at timestamptz NOT NULL
        ) WITH (autovacuum_vacuum_scale_factor = 0.05)""",
        "CREATE INDEX keys_expiry ON {schema}.keys (expires_at)",
        """CREATE TABLE {schema}.workers (
            name text PRIMARY KEY,
            info text NOT NULL,
            expires_at timestamptz NOT NULL
        )""",
        """CREATE TABLE {schema}.workflow_counts (
            key text PRIMARY KEY,
            count integer NOT NULL,
            expires_at timestamptz NOT NULL
        )""",
        "CREATE INDEX workflow_counts_expiry ON {schema}.workflow_counts (expires_at)",
        """CREATE TABLE {schema}.workflow_members (
            key text NOT NULL,
            idx integer NOT NULL,
            value bytea NOT NULL,
            PRIMARY KEY (key, idx)
        )""",
        # Store a final notification under p_key unless a live one is there (first wins);
        # else, given a nonce the one there does not carry, under p_beside; NOTIFY the key
        # stored ("r:<key>") and return it, or NULL: a duplicate, neither stored nor sent.
        """CREATE FUNCTION {schema}.publish_result(p_channel text, p_key text, p_beside text,
                p_nonce bytea, p_body bytea, p_ttl float8) RETURNS text
            LANGUAGE plpgsql AS $$
        DECLARE
            v_expires timestamptz := now() + make_interval(secs => p_ttl);
        BEGIN
            INSERT INTO {schema}.results AS r (key, body, expires_at)
                VALUES (p_key, p_body, v_expires)
                ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body,
                    expires_at = EXCLUDED.expires_at WHERE r.expires_at <= now();
            IF FOUND THEN
                PERFORM pg_notify(p_channel, 'r:' || p_key);
                RETURN p_key;
            END IF;
            -- a statement of its own: it sees the first, committed by now
            IF p_nonce IS NULL OR EXISTS (SELECT 1 FROM {schema}.results AS r
                    WHERE r.key = p_key AND position(p_nonce IN r.body) > 0) THEN
                RETURN NULL;
            END IF;
            INSERT INTO {schema}.results AS r (key, body, expires_at)
                VALUES (p_beside, p_body, v_expires)
                ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body,
                    expires_at = EXCLUDED.expires_at WHERE r.expires_at <= now();
            IF FOUND THEN
                PERFORM pg_notify(p_channel, 'r:' || p_beside);
                RETURN p_beside;
            END IF;
            RETURN NULL;
        END $$""",
        # One step of the GCRA rate limiter under p_key on the server's clock, as
        # ivy.notifiers.base.gcra_step; with p_hold, gcra_reserve with a reservation kept
        # under p_hold (Notifier.reserve_rate_slot). Returns the seconds to wait (0: now).
        """CREATE FUNCTION {schema}.rate_slot(p_key text, p_interval float8, p_burst integer,
                p_hold text, p_grace float8, p_early float8) RETURNS float8
            LANGUAGE plpgsql AS $$
        DECLARE
            v_value text;
            v_now float8;
            v_held float8;
            v_tat float8;
            v_wait float8;
        BEGIN
            LOOP  -- lock the limiter's row (made if missing): callers take turns
                INSERT INTO {schema}.keys (key, value, expires_at)
                    VALUES (p_key, '', '-infinity') ON CONFLICT (key) DO NOTHING;
                SELECT CASE WHEN k.expires_at > clock_timestamp() THEN k.value END
                    INTO v_value FROM {schema}.keys AS k WHERE k.key = p_key FOR UPDATE;
                EXIT WHEN FOUND;
            END LOOP;
            v_now := extract(epoch FROM clock_timestamp());
            IF p_hold IS NOT NULL THEN
                SELECT k.value::float8 INTO v_held FROM {schema}.keys AS k
                    WHERE k.key = p_hold AND k.expires_at > clock_timestamp();
                IF FOUND THEN  -- a slot reserved before: wait for it, or use it up
                    IF v_held - v_now > p_early THEN
                        RETURN v_held - v_now;
                    END IF;
                    DELETE FROM {schema}.keys AS k WHERE k.key = p_hold;
                    RETURN 0;
                END IF;
            END IF;
            v_tat := nullif(v_value, '')::float8;
            IF v_tat IS NULL OR v_tat < v_now - 2 * p_interval THEN
                v_tat := v_now;
            END IF;
            v_wait := v_tat - v_now - (p_burst - 1) * p_interval;
            IF v_wait > 1e-9 AND p_hold IS NULL THEN
                RETURN v_wait;
            END IF;
            v_tat := v_tat + p_interval;
            UPDATE {schema}.keys AS k SET value = v_tat::text,
                expires_at = to_timestamp(v_tat + p_interval + 1) WHERE k.key = p_key;
            IF v_wait <= 1e-9 THEN
                RETURN 0;
            END IF;
            INSERT INTO {schema}.keys AS k (key, value, expires_at)
                VALUES (p_hold, (v_now + v_wait)::text,
                        to_timestamp(v_now + v_wait + greatest(p_grace, v_wait)))
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,
                    expires_at = EXCLUDED.expires_at;
            RETURN v_wait;
        END $$""",
        # Record member p_idx of p_key unless recorded (first wins) and count the members,
        # under the lock of the key's counter row; an expired key starts afresh.
        """CREATE FUNCTION {schema}.workflow_record(p_key text, p_idx integer, p_value bytea,
                p_ttl float8, OUT stored boolean, OUT members integer)
            LANGUAGE plpgsql AS $$
        DECLARE
            v_live boolean;
        BEGIN
            LOOP
                INSERT INTO {schema}.workflow_counts (key, count, expires_at)
                    VALUES (p_key, 0, '-infinity') ON CONFLICT (key) DO NOTHING;
                SELECT c.expires_at > now(), c.count INTO v_live, members
                    FROM {schema}.workflow_counts AS c WHERE c.key = p_key FOR UPDATE;
                EXIT WHEN FOUND;
            END LOOP;
            IF NOT v_live THEN  -- new, or expired: its old members are gone
                DELETE FROM {schema}.workflow_members AS m WHERE m.key = p_key;
                members := 0;
            END IF;
            INSERT INTO {schema}.workflow_members (key, idx, value)
                VALUES (p_key, p_idx, p_value) ON CONFLICT DO NOTHING;
            stored := FOUND;
            members := members + stored::integer;
            UPDATE {schema}.workflow_counts AS c SET count = members,
                expires_at = greatest(CASE WHEN v_live THEN c.expires_at END,
                                      now() + make_interval(secs => p_ttl))
                WHERE c.key = p_key;
        END $$""",
    ]),
]
#: the newest schema version this ivy knows
LATEST = len(MIGRATIONS)

_BOOTSTRAP: list[LiteralString] = [
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    """CREATE TABLE IF NOT EXISTS {schema}.migrations (
        version integer PRIMARY KEY,
        description text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )""",
]


class SchemaTooNew(ConfigurationError):
    """The schema was migrated by a newer ivy than this one: this ivy refuses to touch it."""


def lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) that migrations of ``schema`` take."""
    digest = hashlib.sha256(f"ivy.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _statement(template: LiteralString, schema: str) -> sql.Composed:
    return sql.SQL(template).format(schema=sql.Identifier(schema))


def current_version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The version recorded in ``schema`` (0: none applied), None when it has no
    migrations table yet."""
    table = sql.SQL("{}.migrations").format(sql.Identifier(schema)).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute(_statement("SELECT coalesce(max(version), 0) FROM {schema}.migrations",
                                    schema)).fetchone()
    return int(found[0]) if found else 0


def _refuse(version: int, schema: str, url: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"the PostgreSQL schema {schema!r} of {url} is at version {version}, newer than this "
        f"ivy knows (up to {LATEST}): a newer ivy migrated it. Upgrade ivy-queue here (pip "
        "install -U 'ivy-queue[postgres]'), or use another schema (?schema=NAME)")


def migrate(conn: psycopg.Connection[Any], schema: str, url: str) -> tuple[int, list[int]]:
    """Apply the migrations that ``schema`` lacks, in one transaction under the advisory
    lock :func:`lock_key`, held by the session (several processes may start at once: one
    migrates, the others wait and find it done). Returns the version and the versions
    applied now; a schema newer than :data:`LATEST` raises :class:`SchemaTooNew`. ``conn``
    must be in autocommit mode."""
    version = current_version(conn, schema)
    if version == LATEST:
        return version, []
    if version is not None and version > LATEST:
        raise _refuse(version, schema, url)
    # A session lock, taken before the transaction: a transaction begun before another
    # process's migration committed could keep seeing the catalog as it was
    conn.execute("SELECT pg_advisory_lock(%s)", [lock_key(schema)])
    try:
        with conn.transaction():
            version = current_version(conn, schema)  # again, now that we hold the lock
            if version is not None and version > LATEST:
                raise _refuse(version, schema, url)
            if version is None:
                for template in _BOOTSTRAP:
                    conn.execute(_statement(template, schema))
                version = 0
            applied = list(range(version + 1, LATEST + 1))
            for number in applied:
                description, statements = MIGRATIONS[number - 1]
                for template in statements:
                    conn.execute(_statement(template, schema))
                conn.execute(_statement("INSERT INTO {schema}.migrations (version, "
                                        "description) VALUES (%s, %s)", schema),
                             [number, description])
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", [lock_key(schema)])
    return LATEST, applied
