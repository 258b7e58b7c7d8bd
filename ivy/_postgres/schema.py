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
