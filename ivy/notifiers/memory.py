"""``memory://[name]``: an in-process notifier, shared by name like the memory queue backend."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Self

from ivy._shared import Shared
from ivy.notifiers.base import (
    HOLD_EARLY,
    Notifier,
    Subscription,
    beside,
    beside_key,
    gcra_reserve,
    gcra_step,
    hold_ttl,
)

#: Stored final notifications kept per hub, oldest evicted first; the same cap bounds a channel.
MAX_STORED = 100_000


class _Hub:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.channels: dict[str, deque[bytes]] = {}
        self.stored: OrderedDict[str, bytes] = OrderedDict()
        #: worker name -> (expiry on the monotonic clock, heartbeat as JSON)
        self.workers: dict[str, tuple[float, str]] = {}
        #: one buffer per open events subscription: an event goes to each
        self.event_buffers: list[deque[bytes]] = []
        #: key -> (expiry on the monotonic clock, value): see Notifier.claim_key
        self.keys: dict[str, tuple[float, str]] = {}

    def channel(self, name: str) -> deque[bytes]:
        buf = self.channels.get(name)
        if buf is None:
            buf = self.channels[name] = deque(maxlen=MAX_STORED)
        return buf


#: the hubs of this process, by name: notifiers with the same name share one
_hubs: Shared[str, _Hub] = Shared(_Hub)


class MemorySubscription(Subscription):
    def __init__(self, hub: _Hub, channel: str, pending: Callable[[], Collection[str]]) -> None:
        self._hub = hub
        self._channel = channel
        self._pending = pending
        self._caught_up = False
        self._closed = False

    def get(self, timeout: float) -> list[bytes]:
        hub = self._hub
        with hub.cond:
            if not self._caught_up:
                self._caught_up = True
                stored = [hub.stored[i] for i in self._pending() if i in hub.stored]
                if stored:
                    return stored
            return self._drain(hub.channel(self._channel), timeout)

    def _drain(self, buf: deque[bytes], timeout: float) -> list[bytes]:
        """Wait (holding the hub's condition) until ``buf`` has items or ``timeout``, then
        take them all."""
        if not buf and not self._closed:
            self._hub.cond.wait_for(lambda: bool(buf) or self._closed, timeout)
        items = list(buf)
        buf.clear()
        return items

    def close(self) -> None:
        with self._hub.cond:
            self._closed = True
            self._hub.cond.notify_all()


class MemoryEventSubscription(MemorySubscription):
    """The task events published while it is open, from a buffer of its own."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self._buf: deque[bytes] = deque(maxlen=MAX_STORED)
        self._closed = False
        with hub.cond:
            hub.event_buffers.append(self._buf)

    def get(self, timeout: float) -> list[bytes]:
        with self._hub.cond:
            return self._drain(self._buf, timeout)

    def close(self) -> None:
        with self._hub.cond:
            self._closed = True
            if self._buf in self._hub.event_buffers:
                self._hub.event_buffers.remove(self._buf)
            self._hub.cond.notify_all()


class MemoryNotifier(Notifier):
    def __init__(self, name: str = "default") -> None:
        self.name = name or "default"
        self.url = f"memory://{self.name}"
        self._hub = _hubs.get(self.name)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(str(config.get("name") or "default"))

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool,
                nonce: str | None = None) -> None:
        hub = self._hub
        with hub.cond:
            if final:
                key = beside(call_id, hub.stored.get(call_id), nonce)
                if key is None or key in hub.stored:
                    return  # the first final notification wins
                hub.stored[key] = body
                if len(hub.stored) > MAX_STORED:
                    hub.stored.popitem(last=False)
            hub.channel(channel).append(body)
            hub.cond.notify_all()  # subscribers of other channels wake and wait again

    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        return MemorySubscription(self._hub, channel, pending)

    def stored(self, call_id: str, nonce: str | None = None) -> bytes | None:
        with self._hub.cond:
            found = None if nonce is None else self._hub.stored.get(beside_key(call_id, nonce))
            return found if found is not None else self._hub.stored.get(call_id)


    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        text = json.dumps(dict(info))
        with self._hub.cond:
            self._hub.workers[name] = (time.monotonic() + ttl, text)

    def remove_worker(self, name: str) -> None:
        with self._hub.cond:
            self._hub.workers.pop(name, None)

    def workers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._hub.cond:
            table = self._hub.workers
            for name in [n for n, (expires, _) in table.items() if expires <= now]:
                del table[name]
            return [json.loads(table[name][1]) for name in sorted(table)]

    def publish_event(self, body: bytes) -> None:
        self.publish_events([body])

    def publish_events(self, bodies: list[bytes]) -> None:
        hub = self._hub
        with hub.cond:
            if hub.event_buffers:
                for buf in hub.event_buffers:
                    buf.extend(bodies)
                hub.cond.notify_all()

    def subscribe_events(self) -> Subscription:
        return MemoryEventSubscription(self._hub)

    # -- workflow store (groups/chords) --

    def _workflow_store(self) -> dict[str, tuple[float, dict[int, bytes]]]:
        """key -> (expiry on the monotonic clock, members); kept on the hub, so every notifier
        of one name shares it. Call with the hub's condition held."""
        store: dict[str, tuple[float, dict[int, bytes]]] = self._hub.__dict__.setdefault(
            "workflow_store", {})
        return store

    def workflow_record(self, key: str, index: int, value: bytes,
                        ttl: float) -> tuple[bool, int]:
        now = time.monotonic()
        with self._hub.cond:
            store = self._workflow_store()
            if len(store) >= MAX_STORED:  # bounded like the stored results: expired ones go,
                for old in [k for k, (expires, _) in store.items() if expires <= now]:
                    del store[old]
                while len(store) > MAX_STORED * 9 // 10:  # then the least recently used
                    del store[next(iter(store))]
            expires, members = store.pop(key, (0.0, {}))
            if expires <= now:
                members = {}
            inserted = index not in members
            if inserted:
                members[index] = value
            store[key] = (now + ttl, members)
            return inserted, len(members)

    def workflow_members(self, key: str) -> dict[int, bytes]:
        with self._hub.cond:
            expires, members = self._workflow_store().get(key, (0.0, {}))
            return dict(members) if expires > time.monotonic() else {}

    # -- keys, claims and counters (schedules, unique, cancel, rate limits) --

    def _live_key(self, key: str, now: float) -> str | None:
        """The value of ``key`` unless expired (then dropped); call holding the hub's lock."""
        entry = self._hub.keys.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._hub.keys[key]
            return None
        return entry[1]

    def claim_key(self, key: str, value: str, ttl: float) -> str | None:
        now = time.monotonic()
        with self._hub.cond:
            keys = self._hub.keys
            if len(keys) > MAX_STORED:  # drop the expired ones now and then
                for name in [k for k, (expires, _) in keys.items() if expires <= now]:
                    del keys[name]
            held = self._live_key(key, now)
            if held is not None:
                return held
            keys[key] = (now + ttl, value)
            return None

    def get_keys(self, keys: Sequence[str]) -> list[str | None]:
        now = time.monotonic()
        with self._hub.cond:
            return [self._live_key(k, now) for k in keys]

    def release_key(self, key: str, value: str, ttl: float, new_value: str | None = None
                    ) -> bool:
        now = time.monotonic()
        with self._hub.cond:
            if self._live_key(key, now) != value:
                return False
            if ttl <= 0:
                del self._hub.keys[key]
            else:
                self._hub.keys[key] = (now + ttl, value if new_value is None else new_value)
            return True

    def extend_key(self, key: str, value: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._hub.cond:
            if self._live_key(key, now) != value:
                return False
            expires, _ = self._hub.keys[key]
            self._hub.keys[key] = (max(expires, now + ttl), value)
            return True

    def reserve_rate_slot(self, key: str, interval: float, burst: int, holder: str) -> float:
        now = time.monotonic()
        hold = f"{key}:{holder}"
        with self._hub.cond:
            held = self._live_key(hold, now)
            if held is not None:  # a slot reserved before: wait for it, or use it up
                left = float(held) - now
                if left > HOLD_EARLY:
                    return left
                del self._hub.keys[hold]
                return 0.0
            tat_text = self._live_key(key, now)
            tat, wait = gcra_reserve(None if tat_text is None else float(tat_text), now,
                                     interval, burst)
            self._hub.keys[key] = (tat + interval + 1.0, repr(tat))
            if wait > 0:
                self._hub.keys[hold] = (now + hold_ttl(wait), repr(now + wait))
            return wait

    def take_rate_slot(self, key: str, interval: float, burst: int) -> float:
        now = time.monotonic()
        with self._hub.cond:
            held = self._live_key(key, now)
            tat, wait = gcra_step(None if held is None else float(held), now, interval, burst)
            if wait == 0.0:
                self._hub.keys[key] = (tat + interval + 1.0, repr(tat))
            return wait
