"""``redis://`` / ``rediss://``: the Redis notifier (``pip install 'ivy-queue[redis]'``):
results stored first-wins and published, worker heartbeats, task events, and the keys of the
timing features; how: docs/internals/redis.md."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Self

import redis
import redis.exceptions

from ivy._urls import driver_url, mask_url
from ivy.notifiers._redis_direct import Commands, ResultWriter, read_pubsub
from ivy.notifiers.base import HOLD_EARLY, HOLD_GRACE, Notifier, Subscription, beside_key

log = logging.getLogger("ivy.redis")

KEY_PREFIX = "ivy:result:"
OPTIONS = ("result_ttl",)
# KEYS[1] result key, KEYS[2] the key beside it for this nonce (ivy.notifiers.base.beside);
# ARGV[1] body, ARGV[2] ttl seconds, ARGV[3] channel, ARGV[4] nonce ('' for none)
STORE_AND_PUBLISH = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('PUBLISH', ARGV[3], ARGV[1])
    return 1
end
if ARGV[4] == '' then return 0 end
local first = redis.call('GET', KEYS[1])
if first and string.find(first, ARGV[4], 1, true) then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('PUBLISH', ARGV[3], ARGV[1])
    return 1
end
return 0
"""


WORKERS_KEY = "ivy:workers"
WORKERS_INFO_KEY = "ivy:workers:info"
EVENTS_CHANNEL = "ivy:events"
# KEYS[1] zset name -> expiry ms, KEYS[2] hash name -> info; ARGV[1] name, ARGV[2] info,
# ARGV[3] ttl ms. Redis's own clock (TIME) decides expiry for every host alike.
PUT_WORKER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
if #expired > 0 then
    redis.call('ZREM', KEYS[1], unpack(expired))
    redis.call('HDEL', KEYS[2], unpack(expired))
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
# KEYS as above; returns {name, info, name, info, ...} of the entries not expired
LIVE_WORKERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for _, name in ipairs(names) do
    local info = redis.call('HGET', KEYS[2], name)
    if info then
        out[#out + 1] = name
        out[#out + 1] = info
    end
end
return out
"""

# KEYS[1] key; ARGV[1] value, ARGV[2] ttl ms. Returns the value held, or false if set now.
CLAIM_KEY = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS[1] key; ARGV[1] value, ARGV[2] ttl ms (<= 0: delete), ARGV[3] the value from now on
# (optional). 1 if the key held the value.
RELEASE_KEY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) <= 0 then redis.call('DEL', KEYS[1])
elseif ARGV[3] then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
# KEYS[1] key; ARGV[1] value, ARGV[2] ttl ms. 1 if the key held the value; its TTL is then
# at least ARGV[2] (never cut: PEXPIRE ... GT, written out for Redis before 7).
EXTEND_KEY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
# GCRA on the server's clock, as ivy.notifiers.base.gcra_step. KEYS[1] key; ARGV[1]
# interval s, ARGV[2] burst. Returns the seconds to wait as a string ("0" when a slot was
# taken; Lua numbers become integers in replies, so floats travel as text).
TAKE_RATE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now - 2 * interval then tat = now end
local wait = tat - now - (tonumber(ARGV[2]) - 1) * interval
if wait > 1e-9 then return tostring(wait) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX',
           math.ceil((tat - now + interval) * 1000) + 1000)
return '0'
"""

# ivy.notifiers.base.gcra_reserve with a reservation per holder, on the server's clock.
# KEYS[1] the limiter, KEYS[2] the holder's reservation; ARGV[1] interval s, ARGV[2] burst,
# ARGV[3] HOLD_GRACE, ARGV[4] HOLD_EARLY. Returns the seconds to wait as a string.
RESERVE_RATE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('GET', KEYS[2])
if held then
  local left = tonumber(held) - now
  if left > tonumber(ARGV[4]) then return tostring(left) end
  redis.call('DEL', KEYS[2])
  return '0'
end
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now - 2 * interval then tat = now end
local wait = tat - now - (tonumber(ARGV[2]) - 1) * interval
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX',
           math.ceil((tat - now + interval) * 1000) + 1000)
if wait > 1e-9 then
  redis.call('SET', KEYS[2], string.format('%.6f', now + wait), 'PX',
             math.ceil((wait + math.max(tonumber(ARGV[3]), wait)) * 1000))
  return tostring(wait)
end
return '0'
"""


def _as_is(push: Any) -> Any:
    """A subscription's handler of RESP3 pushes (its messages): hand each over as it is.
    redis-py's default one logs every message at debug level, building the text of the whole
    message first (``str`` of its bytes), even with debug logging off: ~4% of a producer's CPU
    when results come in at thousands a second."""
    return push


def _pubsub(notifier: RedisNotifier) -> Any:
    # Typed as Any: redis-py < 8 leaves ``pubsub`` untyped and 8 types it, so no ignore
    # comment holds across the supported range.
    client: Any = notifier.client
    return client.pubsub(push_handler_func=_as_is)


class RedisSubscription(Subscription):
    def __init__(self, notifier: RedisNotifier, channel: str,
                 pending: Callable[[], Collection[str]]) -> None:
        self._notifier = notifier
        self._pending = pending
        self._closed = threading.Event()
        self._pubsub = _pubsub(notifier)
        self._direct = notifier._commands.direct
        self._pubsub.subscribe(channel)

    def get(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` seconds; return a notification as soon as one arrives (a
        round trip's result should not wait for another look at the socket), or the stored
        ones of pending calls after a (re)subscription."""
        deadline = time.monotonic() + timeout
        wait = timeout
        while not self._closed.is_set():
            try:
                reply = read_pubsub(self._pubsub, wait, direct=self._direct)
            except (redis.exceptions.ConnectionError, ValueError, AttributeError, TypeError,
                    OSError):
                if self._closed.is_set():  # closed from another thread mid-read (hiredis
                    return []               # then raises TypeError): not an error
                raise
            if reply is None:
                return []
            kind, data = reply
            if kind == "message":
                return [data]
            if kind == "subscribe":  # first subscription or a reconnect: catch up
                found = self._notifier.stored_many(list(self._pending()))
                if found:
                    return found
            wait = deadline - time.monotonic()
            if wait <= 0:
                return []
        return []

    def close(self) -> None:
        _close_pubsub(self._closed, self._pubsub)


def _close_pubsub(closed: threading.Event, pubsub: Any) -> None:
    """Mark a subscription closed and close its connection (a read in progress ends)."""
    closed.set()
    try:
        pubsub.close()
    except Exception:
        log.debug("closing a Redis subscription raised", exc_info=True)


class RedisEventSubscription(Subscription):
    """The ``ivy:events`` channel; the constructor returns once Redis confirmed the
    subscription, so nothing published afterwards is missed."""

    def __init__(self, notifier: RedisNotifier, confirm_timeout: float = 10.0) -> None:
        self._closed = threading.Event()
        self._direct = notifier._commands.direct
        self._pubsub = _pubsub(notifier)
        self._pubsub.subscribe(notifier.events_channel)
        deadline = time.monotonic() + confirm_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise redis.exceptions.TimeoutError(
                    f"Redis at {notifier.url} did not confirm the subscription to "
                    f"{notifier.events_channel!r} within {confirm_timeout} s")
            reply = read_pubsub(self._pubsub, remaining, direct=self._direct)
            if reply is not None and reply[0] == "subscribe":
                break

    def get(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            wait = deadline - time.monotonic()
            if wait <= 0:
                return []
            try:
                reply = read_pubsub(self._pubsub, wait, direct=self._direct)
            except Exception:
                if self._closed.is_set():  # closed from another thread mid-read: any error
                    return []
                raise
            if reply is None:
                return []
            if reply[0] == "message":
                return [reply[1]]
        return []

    def close(self) -> None:
        _close_pubsub(self._closed, self._pubsub)


class RedisNotifier(Notifier):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 result_ttl: int = 86400) -> None:
        clean = driver_url(url, OPTIONS)
        self.url = mask_url(url)
        self.result_ttl = int(result_ttl)
        self.client: redis.Redis = redis.Redis.from_url(
            clean, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)
        # the name Redis gives the script (EVALSHA), not a security use of SHA-1
        self._sha = hashlib.sha1(STORE_AND_PUBLISH.encode(), usedforsecurity=False).hexdigest()
        # a worker sends a command or two per task: on connections of its own (_redis_direct)
        self._commands = Commands(self.client)
        #: a worker's results, stored in batches (publish_then)
        self._writer = ResultWriter(self._commands, STORE_AND_PUBLISH, self._sha,
                                    name="ivy-redis-results")
        db = int(self.client.connection_pool.connection_kwargs.get("db") or 0)
        #: the pub/sub channel of task events (``ivy:events``; ``ivy:events@<db>`` off db 0)
        self.events_channel = EVENTS_CHANNEL if db == 0 else f"{EVENTS_CHANNEL}@{db}"
        self._put_worker = self.client.register_script(PUT_WORKER)
        self._live_workers = self.client.register_script(LIVE_WORKERS)
        self._claim_key = self.client.register_script(CLAIM_KEY)
        self._release_key = self.client.register_script(RELEASE_KEY)
        self._extend_key = self.client.register_script(EXTEND_KEY)
        self._take_rate_slot = self.client.register_script(TAKE_RATE_SLOT)
        self._reserve_rate_slot = self.client.register_script(RESERVE_RATE_SLOT)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or "redis://127.0.0.1:6379/0")
        return cls(url, result_ttl=int(config.get("result_ttl", 86400)))

    def _store(self, channel: str, call_id: str, body: bytes,
               nonce: str | None) -> tuple[Any, ...]:
        """The arguments of STORE_AND_PUBLISH (after its sha) for a final notification."""
        key = KEY_PREFIX + call_id
        return (2, key, key if nonce is None else KEY_PREFIX + beside_key(call_id, nonce),
                body, self.result_ttl, channel, nonce or "")

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool,
                nonce: str | None = None) -> None:
        if final:
            store = ("EVALSHA", self._sha, *self._store(channel, call_id, body, nonce))
            try:
                self._commands(*store)
            except redis.exceptions.NoScriptError:  # a new or flushed server
                self.client.script_load(STORE_AND_PUBLISH)
                self._commands(*store)
        else:
            self._commands("PUBLISH", channel, body)

    def publish_then(self, channel: str, call_id: str, body: bytes, *, final: bool,
                     then: Callable[[], None], nonce: str | None = None) -> None:
        """A final notification goes to the result writer, which stores it with the others
        handed over meanwhile, in one round trip, and calls ``then`` (the worker's ack) after,
        from its own thread; others are published here."""
        if not final:
            super().publish_then(channel, call_id, body, final=final, then=then, nonce=nonce)
            return
        self._writer.submit(self._store(channel, call_id, body, nonce), then)

    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        return RedisSubscription(self, channel, pending)

    def stored(self, call_id: str, nonce: str | None = None) -> bytes | None:
        if nonce is None:
            value = self.client.get(KEY_PREFIX + call_id)
            return value if isinstance(value, bytes) else None
        for value in self.client.mget([KEY_PREFIX + beside_key(call_id, nonce),
                                       KEY_PREFIX + call_id]):
            if isinstance(value, bytes):  # the one beside it first
                return value
        return None

    def stored_many(self, call_ids: list[str]) -> list[bytes]:
        found: list[bytes] = []
        for start in range(0, len(call_ids), 500):
            chunk = call_ids[start:start + 500]
            values = self.client.mget([KEY_PREFIX + i for i in chunk])
            found.extend(v for v in values if isinstance(v, bytes))
        return found

    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        self._put_worker(keys=[WORKERS_KEY, WORKERS_INFO_KEY],
                         args=[name, json.dumps(dict(info)), max(1, int(ttl * 1000))])

    def remove_worker(self, name: str) -> None:
        pipe = self.client.pipeline()
        pipe.zrem(WORKERS_KEY, name)
        pipe.hdel(WORKERS_INFO_KEY, name)
        pipe.execute()

    def workers(self) -> list[dict[str, Any]]:
        flat = self._live_workers(keys=[WORKERS_KEY, WORKERS_INFO_KEY])
        pairs = sorted(zip(flat[::2], flat[1::2], strict=True))
        return [json.loads(info) for _, info in pairs]

    def publish_event(self, body: bytes) -> None:
        self._commands("PUBLISH", self.events_channel, body)

    def publish_events(self, bodies: list[bytes]) -> None:
        if len(bodies) == 1:
            self._commands("PUBLISH", self.events_channel, bodies[0])
            return
        with self.client.pipeline(transaction=False) as pipe:  # one round trip, in order
            for body in bodies:
                pipe.publish(self.events_channel, body)
            pipe.execute()

    def subscribe_events(self) -> Subscription:
        return RedisEventSubscription(self)

    def close(self) -> None:
        self._writer.close()
        self._commands.close()
        self.client.close()

    # -- workflow store (groups/chords) --
    # A hash ivy:workflow:<key> (member index -> value); one Lua script does HSETNX, EXPIRE and
    # HLEN, so the first record of a member wins and the count includes it atomically.

    def workflow_record(self, key: str, index: int, value: bytes,
                        ttl: float) -> tuple[bool, int]:
        script = getattr(self, "_workflow_script", None)
        if script is None:
            script = self._workflow_script = self.client.register_script(WORKFLOW_RECORD)
        inserted, count = script(keys=[WORKFLOW_KEY_PREFIX + key],
                                 args=[index, value, max(1, int(ttl))])
        return bool(inserted), int(count)

    def workflow_members(self, key: str) -> dict[int, bytes]:
        found = self.client.hgetall(WORKFLOW_KEY_PREFIX + key)
        return {int(i): v if isinstance(v, bytes) else str(v).encode()
                for i, v in found.items()}


    # -- keys, claims and counters (schedules, unique, cancel, rate limits) --

    def claim_key(self, key: str, value: str, ttl: float) -> str | None:
        held = self._claim_key(keys=[key], args=[value, max(1, int(ttl * 1000))])
        return held.decode() if isinstance(held, bytes) else None

    def get_keys(self, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        values = self._commands("MGET", *keys)  # the worker asks once per message: fast path
        return [v.decode() if isinstance(v, bytes) else None for v in values]

    def release_key(self, key: str, value: str, ttl: float, new_value: str | None = None
                    ) -> bool:
        ms = max(1, int(ttl * 1000)) if ttl > 0 else 0
        args: list[str | int] = [value, ms] if new_value is None else [value, ms, new_value]
        return bool(self._release_key(keys=[key], args=args))

    def extend_key(self, key: str, value: str, ttl: float) -> bool:
        ms = max(1, int(ttl * 1000))
        return bool(self._extend_key(keys=[key], args=[value, ms]))

    def reserve_rate_slot(self, key: str, interval: float, burst: int, holder: str) -> float:
        wait = self._reserve_rate_slot(keys=[key, f"{key}:{holder}"],
                                       args=[repr(interval), int(burst), repr(HOLD_GRACE),
                                             repr(HOLD_EARLY)])
        return float(wait)

    def take_rate_slot(self, key: str, interval: float, burst: int) -> float:
        wait = self._take_rate_slot(keys=[key], args=[repr(interval), int(burst)])
        return float(wait)


WORKFLOW_KEY_PREFIX = "ivy:workflow:"
# KEYS[1] the hash; ARGV[1] member index, ARGV[2] value, ARGV[3] ttl seconds
WORKFLOW_RECORD = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {added, redis.call('HLEN', KEYS[1])}
"""
