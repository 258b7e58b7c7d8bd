"""Rate limits: ``register_task(..., rate_limit="10/s")``, held across every worker sharing the
notifier by a GCRA limiter in its store (docs/internals/timing.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ivy.errors import ConfigurationError
from ivy.stores import KeyStore

RATE_PREFIX = "ivy:rate:"
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_FORMAT = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


@dataclass(frozen=True)
class RateLimit:
    """``count`` calls per ``period`` seconds."""

    count: int
    period: float
    text: str

    @property
    def interval(self) -> float:
        return self.period / self.count

    def wait(self, notifier: KeyStore, task: str, call_id: str) -> float:
        """0.0 if call ``call_id`` of ``task`` may start now (its slot is taken, or the slot
        it reserved before has come), else how long to defer it: until the slot it reserves
        now (:meth:`ivy.notifiers.base.Notifier.reserve_rate_slot`), or the one it holds."""
        wait = notifier.reserve_rate_slot(RATE_PREFIX + task, self.interval, 1, call_id)
        return max(wait, 0.0)

    def __str__(self) -> str:
        return self.text


def parse_rate_limit(value: object, task: str) -> RateLimit | None:
    """``"10/s"`` -> RateLimit(10, 1.0); None stays None; anything else is refused."""
    if value is None:
        return None
    match = _FORMAT.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ConfigurationError(
            f"rate_limit {value!r} for task {task!r} is not a rate: write 'N/s', 'N/m' or "
            "'N/h' with N a whole number >= 1, such as '10/s' or '100/m'")
    count, unit = int(match.group(1)), match.group(2)
    return RateLimit(count, PERIODS[unit], f"{count}/{unit}")
