"""What the producer's parts need of one another and of the app, as narrow protocols, and
:class:`Outgoing`, one encoded call on its way to the queue backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ivy.call import Call
from ivy.message import Message
from ivy.middleware import Pipeline
from ivy.queues.base import QueueBackend
from ivy.results import Results
from ivy.serialization import Serializer
from ivy.task import Registry


@dataclass(slots=True)
class Outgoing:
    """One encoded call on its way to the queue backend."""

    call: Call[Any]
    message: Message
    queue: str
    body: bytes
    priority: int
    delay: float
    route: str | None


class Settings(Protocol):
    """What the producer reads of its app's settings, at each send (they may change after
    the producer is made: a framework integration replaces the registry, say)."""

    registry: Registry
    serializer: Serializer
    middleware: Pipeline
    max_depth: int
    max_message_bytes: int
    pending_ttl: float
    channel: str

    def seal(self, body: bytes) -> bytes: ...


class Sources(Protocol):
    """Where the producer sends, and hears back from: the app's backends."""

    results: Results

    @property
    def queue(self) -> QueueBackend: ...

    @property
    def closed(self) -> bool: ...

    def check_open(self) -> None: ...

    def start_consumer(self, spec: Any = None) -> None: ...


class Sender(Protocol):
    """What unique sends and workflows use of the producer."""

    settings: Settings
    sources: Sources
    canceller: Callable[[str], None]

    def results(self) -> Results: ...

    def hand_over(self, outs: list[Outgoing], queue: str, priority: int, delay: float,
                  route: str | None) -> None: ...

    def send_failed(self, call: Call[Any], error: BaseException) -> None: ...
