"""What a feature needs of a notifier besides results, as narrow protocols: a feature types
against the role it uses; :class:`ivy.notifiers.base.Notifier` implements them all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class KeyStore(Protocol):
    """Small atomic operations on keys shared by every process of the notifier: schedules'
    slots, unique sends, cancels, paused queues and rate limits build on them."""

    url: str

    def claim_key(self, key: str, value: str, ttl: float) -> str | None: ...

    def get_keys(self, keys: Sequence[str]) -> list[str | None]: ...

    def release_key(self, key: str, value: str, ttl: float, new_value: str | None = None
                    ) -> bool: ...

    def extend_key(self, key: str, value: str, ttl: float) -> bool: ...

    def take_rate_slot(self, key: str, interval: float, burst: int) -> float: ...

    def reserve_rate_slot(self, key: str, interval: float, burst: int, holder: str
                          ) -> float: ...


class WorkflowStore(Protocol):
    """Where groups and chords collect their members' results, one atomic record each."""

    @property
    def keeps_workflows(self) -> bool: ...

    def workflow_record(self, key: str, index: int, value: bytes,
                        ttl: float) -> tuple[bool, int]: ...

    def workflow_members(self, key: str) -> dict[int, bytes]: ...


class WorkerRegistry(Protocol):
    """The heartbeats of live workers (``ivy inspect``, the dashboard)."""

    url: str

    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None: ...

    def remove_worker(self, name: str) -> None: ...

    def workers(self) -> list[dict[str, Any]]: ...


class Stream(Protocol):
    """An open subscription: what arrived within ``timeout`` seconds, until it is closed."""

    def get(self, timeout: float) -> list[bytes]: ...

    def close(self) -> None: ...


class EventStream(Protocol):
    """The live stream of task events (``ivy events``, the dashboard)."""

    url: str

    def publish_events(self, bodies: list[bytes]) -> None: ...

    def subscribe_events(self) -> Stream: ...


__all__ = ["EventStream", "KeyStore", "Stream", "WorkerRegistry", "WorkflowStore"]
