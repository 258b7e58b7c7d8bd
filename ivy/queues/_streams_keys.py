"""The Redis keys of a Redis Streams queue and the values its modules share."""

from __future__ import annotations

import re
import uuid
from typing import Any

GROUP = "ivy"
#: the highest priority (the wire protocol's)
MAX_PRIORITY = 255
#: the longest one blocking read waits
BLOCK_SECONDS = 0.5
#: the longest one waits while a message this consumer delayed is about to fall due
SHORT_BLOCK_SECONDS = 0.05
#: how often a consumer looks for pending entries that have no lease
ORPHAN_CHECK_SECONDS = 1.0
#: consumers holding nothing and idle this long are removed from the group (SIGKILLed workers)
FORGET_IDLE_MS = 3_600_000
ENTRY_ID = re.compile(r"^\d+-\d+$")


class Keys:
    """The Redis keys of one queue name."""

    def __init__(self, queue: str) -> None:
        self.stream = f"ivy:{{{queue}}}"
        self.leases = f"{self.stream}:leases"
        self.delayed = f"{self.stream}:delayed"
        self.dead = f"{self.stream}.dead"
        self.levels = f"{self.stream}:levels"

    def level(self, priority: str | int) -> str:
        """The stream of ``priority``."""
        return self.stream if str(priority) == "0" else f"{self.stream}:p{priority}"

    @property
    def all(self) -> list[str]:
        return [self.stream, self.leases, self.delayed, self.dead, self.levels]


Entry = tuple[str, dict[bytes, bytes]]


def read_entries(raw: Any) -> list[Entry]:
    """Stream entries as redis-py returns them (ids as bytes) -> (id, fields)."""
    return [(entry_id.decode(), fields) for entry_id, fields in raw or []]


def tag() -> str:
    return uuid.uuid4().hex[:16]


def ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)
