"""``postgresql://`` (and ``postgres://``) as a NOTIFIER URL: results, statuses, workflows, keys,
heartbeats and events in PostgreSQL tables. How it works: docs/internals/postgres.md."""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Self

from ivy._postgres.connection import Database, PostgresError, Settings, parse_url
from ivy._postgres.inbox import EventInbox, Inbox, NoteInbox
from ivy._postgres.store import INLINE_EVENT_BYTES, StoreStatements, notify_channel
from ivy._postgres.writer import Writer
from ivy._urls import mask_url
from ivy.errors import ConfigurationError
from ivy.notifiers.base import HOLD_EARLY, HOLD_GRACE, Notifier, Subscription, beside_key

log = logging.getLogger("ivy.postgres")

#: Seconds a final notification is kept by default (``?result_ttl=``).
DEFAULT_RESULT_TTL = 86400.0
#: Seconds between two prunes of expired rows by one notifier object.
PRUNE_EVERY = 60.0
#: Tries of a claim whose holder committed while it looked (then it sees the holder).
CLAIM_TRIES = 5


class PostgresSubscription(Subscription):
    """The notifications of one channel, or the task events (an :class:`Inbox`)."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        inbox.open()

    @property
    def backend_pid(self) -> int | None:
        """The server's pid of the listening connection (None while it reconnects)."""
        return self._inbox.backend_pid

    def get(self, timeout: float) -> list[bytes]:
        """What came in, as soon as something did; [] after ``timeout`` s."""
        return self._inbox.get(timeout)

    def close(self) -> None:
        """Stop listening; a get() in progress returns [] at once."""
        self._inbox.close()


def _result_ttl(value: Any, url: str) -> float:
    try:
        ttl = float(value)
    except (TypeError, ValueError):
        ttl = 0.0
    if isinstance(value, bool) or not 0 < ttl < float("inf"):
        raise ConfigurationError(f"result_ttl={value!r} for the PostgreSQL notifier "
                                 f"{mask_url(url)!r}: expected a number of seconds > 0, such "
                                 f"as ?result_ttl={DEFAULT_RESULT_TTL:g}")
    return ttl


class PostgresNotifier(Notifier):
    """The PostgreSQL notifier. ``url`` is libpq's URL with ivy's options (``schema``,
    ``pool_size``, ``result_ttl``; a queue's options are ignored); keyword arguments given
    (not None) win over the URL's. Nothing connects until first use.

    Raises:
        ivy.ConfigurationError: a malformed URL or option (the message shows the form).
    """

    def __init__(self, url: str, *, schema: str | None = None,
                 result_ttl: float | str | None = None,
                 pool_size: int | str | None = None) -> None:
        self.settings: Settings = parse_url(url, {"schema": schema, "pool_size": pool_size})
        self.url = self.settings.url
        if result_ttl is None:
            result_ttl = self.settings.options.get("result_ttl", DEFAULT_RESULT_TTL)
        self.result_ttl = _result_ttl(result_ttl, url)
        self.db = Database(self.settings)
        self.sql = StoreStatements(self.settings.schema)
        self._last_prune = 0.0
        self._inboxes: weakref.WeakSet[Inbox] = weakref.WeakSet()
        #: a worker's results, written in batches (publish_then)
        self._writer = Writer(self.db, self.sql.publish_final,
                              name=f"ivy-postgres-results-{self.settings.schema}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Build from the config of a URL or dict (``{"type": "postgresql", "url": ...}``,
        options beside it win over the URL's)."""
        url = config.get("url")
        if not isinstance(url, str):
            raise ConfigurationError(
                f"a PostgreSQL notifier needs a 'url', such as {{'type': 'postgresql', 'url': "
                f"'postgresql://app@db:5432/app'}}: got {sorted(config)}")
        return cls(url, schema=config.get("schema"), result_ttl=config.get("result_ttl"),
                   pool_size=config.get("pool_size"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} schema={self.settings.schema}>"

    def migrate(self) -> tuple[int, list[int]]:
        """Create or upgrade the schema now (as ``ivy migrate``); the version, and the
        versions applied."""
        return self.db.migrate()

    # -- notifications -------------------------------------------------------------------------

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool,
                nonce: str | None = None) -> None:
        """Store and ``NOTIFY`` in one transaction (a final one only if it is the first, or
        beside the first for its nonce)."""
        pg_channel = notify_channel(self.settings.schema, channel)
        with self.db.connection() as conn:
            if final:
                conn.execute(self.sql.publish_final,
                             self._final(pg_channel, call_id, body, nonce))
            else:
                conn.execute(self.sql.publish_other, {"channel": pg_channel, "body": body})
        self._prune()

    def publish_then(self, channel: str, call_id: str, body: bytes, *, final: bool,
                     then: Callable[[], None], nonce: str | None = None) -> None:
        """A final notification is handed to the background writer (:mod:`ivy._postgres.
        writer`), which stores it with the others waiting, in one transaction, and calls
        ``then`` after the commit, from its own thread; others are published here."""
        if not final:
            super().publish_then(channel, call_id, body, final=final, then=then, nonce=nonce)
            return
        pg_channel = notify_channel(self.settings.schema, channel)
        self._writer.submit(self._final(pg_channel, call_id, body, nonce), then)
        self._prune()

    def _final(self, pg_channel: str, call_id: str, body: bytes,
               nonce: str | None) -> dict[str, Any]:
        return {"channel": pg_channel, "key": call_id,
                "beside": None if nonce is None else beside_key(call_id, nonce),
                "nonce": None if nonce is None else nonce.encode(), "body": body,
                "ttl": float(self.result_ttl)}

    def _prune(self) -> None:
        """Delete what has expired, at most every :data:`PRUNE_EVERY` s per notifier, and by
        one process at a time (the others skip)."""
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            with self.db.connection() as conn, conn.transaction():
                locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                      [self.sql.prune_lock]).fetchone()
                if locked and locked[0]:
                    conn.execute(self.sql.prune)
        except PostgresError as exc:
            log.warning("pruning the expired rows of %s failed (%s); tried again in %g s",
                        self.url, exc, PRUNE_EVERY)

    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        """Returns once the subscription listens (it then reads the stored finals of
        ``pending()``); :class:`ivy._postgres.connection.PostgresUnavailable` if it cannot."""
        return self._open(NoteInbox(self.db, self.sql, channel, pending))

    def _open(self, inbox: Inbox) -> Subscription:
        with self.db.connection():  # the pool's first connection migrates the schema
            pass
        subscription = PostgresSubscription(inbox)
        self._inboxes.add(inbox)
        return subscription

    def stored(self, call_id: str, nonce: str | None = None) -> bytes | None:
        """The live final notification of ``call_id`` (with ``nonce``: the one beside it
        first)."""
        keys = [call_id] if nonce is None else [beside_key(call_id, nonce), call_id]
        with self.db.connection() as conn:
            found = dict(conn.execute(self.sql.stored, {"keys": keys}).fetchall())
        for key in keys:
            if key in found:
                return bytes(found[key])
        return None

    def close(self) -> None:
        """Write the results waiting, close the subscriptions still open, and the pool."""
        self._writer.close()
        for inbox in list(self._inboxes):
            inbox.close()
        self.db.close()

    # -- live workers and task events ----------------------------------------------------------

    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        """Upsert the heartbeat, kept ``ttl`` s by the server's clock; drop expired ones."""
        with self.db.connection() as conn:
            conn.execute(self.sql.put_worker, {"name": name, "info": json.dumps(dict(info)),
                                               "ttl": float(ttl)})

    def remove_worker(self, name: str) -> None:
        """Forget worker ``name`` now."""
        with self.db.connection() as conn:
            conn.execute(self.sql.remove_worker, {"name": name})

    def workers(self) -> list[dict[str, Any]]:
        """The heartbeats not expired, ordered by name."""
        with self.db.connection() as conn:
            rows = conn.execute(self.sql.workers).fetchall()
        return [json.loads(r[0]) for r in rows]

    def publish_event(self, body: bytes) -> None:
        """One event (see :meth:`publish_events`)."""
        self.publish_events([body])

    def publish_events(self, bodies: list[bytes]) -> None:
        """``NOTIFY`` each event in order, in one transaction: in its payload if it is ASCII
        and fits, else stored for a minute and announced by its ``seq``."""
        if not bodies:
            return
        inline = [b.isascii() and b"\x00" not in b and len(b) < INLINE_EVENT_BYTES
                  for b in bodies]
        with self.db.connection() as conn:
            if all(inline):  # one statement, its own transaction
                self._notify_events(conn, bodies, inline, [])
                return
            with conn.transaction():
                rows = conn.execute(self.sql.store_events, {
                    "bodies": [b for b, fits in zip(bodies, inline, strict=True)
                               if not fits]}).fetchall()
                # identities are given in the order of insertion, the order of ``bodies``
                self._notify_events(conn, bodies, inline, sorted(int(r[0]) for r in rows))
        self._prune()

    def _notify_events(self, conn: Any, bodies: list[bytes], inline: list[bool],
                       seqs: list[int]) -> None:
        stored = iter(seqs)
        payloads = [f"={b.decode('ascii')}" if fits else f"#{next(stored)}"
                    for b, fits in zip(bodies, inline, strict=True)]
        conn.execute(self.sql.notify_many, {"channel": self.sql.events_channel,
                                            "payloads": payloads})

    def subscribe_events(self) -> Subscription:
        """Returns once it listens: nothing published afterwards is missed while it stays
        connected."""
        return self._open(EventInbox(self.db, self.sql))

    # -- workflow store (groups/chords) --------------------------------------------------------

    def workflow_record(self, key: str, index: int, value: bytes,
                        ttl: float) -> tuple[bool, int]:
        """One call of the function ``workflow_record``, which locks the key's counter."""
        with self.db.connection() as conn:
            row = conn.execute(self.sql.workflow_record, {
                "key": key, "idx": int(index), "value": value, "ttl": float(ttl)}).fetchone()
        assert row is not None
        return bool(row[0]), int(row[1])

    def workflow_members(self, key: str) -> dict[int, bytes]:
        """The members of ``key`` while it lives."""
        with self.db.connection() as conn:
            rows = conn.execute(self.sql.workflow_members, {"key": key}).fetchall()
        return {int(i): bytes(v) for i, v in rows}

    # -- keys, claims and counters (schedules, unique, cancel, rate limits) --------------------

    def claim_key(self, key: str, value: str, ttl: float) -> str | None:
        """Set ``key`` unless it holds a live value: None if set now, else the value held."""
        params = {"key": key, "value": value, "ttl": float(ttl)}
        for _ in range(CLAIM_TRIES):
            with self.db.connection() as conn:
                row = conn.execute(self.sql.claim_key, params).fetchone()
            assert row is not None
            if row[0]:
                self._prune()
                return None
            if row[1] is not None:
                return str(row[1])
            # its holder committed after this statement began: look again
        raise PostgresError(f"PostgreSQL at {self.settings.where} ({self.url}): the key "
                            f"{key!r} changed hands {CLAIM_TRIES} times while it was claimed")

    def get_keys(self, keys: Sequence[str]) -> list[str | None]:
        """The live values of ``keys``, in order."""
        if not keys:
            return []
        with self.db.connection() as conn:
            found = dict(conn.execute(self.sql.get_keys, {"keys": list(keys)}).fetchall())
        return [found.get(k) for k in keys]

    def release_key(self, key: str, value: str, ttl: float, new_value: str | None = None
                    ) -> bool:
        """See :meth:`Notifier.release_key`; one statement."""
        with self.db.connection() as conn:
            if ttl <= 0:
                cur = conn.execute(self.sql.delete_key, {"key": key, "value": value})
            else:
                cur = conn.execute(self.sql.keep_key, {"key": key, "value": value,
                                                       "ttl": float(ttl), "new": new_value})
            return cur.rowcount > 0

    def extend_key(self, key: str, value: str, ttl: float) -> bool:
        """Keep the longer of its time left and ``ttl``; one statement."""
        with self.db.connection() as conn:
            cur = conn.execute(self.sql.extend_key, {"key": key, "value": value,
                                                     "ttl": float(ttl)})
            return cur.rowcount > 0

    def _rate_slot(self, key: str, interval: float, burst: int, hold: str | None) -> float:
        with self.db.connection() as conn:
            row = conn.execute(self.sql.rate_slot, {
                "key": key, "interval": float(interval), "burst": int(burst), "hold": hold,
                "grace": HOLD_GRACE, "early": HOLD_EARLY}).fetchone()
        wait = float(row[0]) if row and row[0] is not None else 0.0
        return wait if wait > 1e-9 else 0.0

    def take_rate_slot(self, key: str, interval: float, burst: int) -> float:
        """GCRA on the server's clock (the function ``rate_slot``)."""
        return self._rate_slot(key, interval, burst, None)

    def reserve_rate_slot(self, key: str, interval: float, burst: int, holder: str) -> float:
        """GCRA with a reservation kept under ``<key>:<holder>`` (the function
        ``rate_slot``)."""
        return self._rate_slot(key, interval, burst, f"{key}:{holder}")
