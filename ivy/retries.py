"""Retry policies of tasks: which exceptions are retried, after how long, and what
:class:`ivy.Retry`, :class:`ivy.Snooze` and :class:`ivy.Discard` raised inside a task ask for."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ivy.errors import ConfigurationError, Discard, Retry, Snooze

Kind = Literal["policy", "retry", "final", "snooze", "discard"]
#: every kind of verdict
KINDS: tuple[Kind, ...] = ("policy", "retry", "final", "snooze", "discard")
Backoff = Sequence[float] | Callable[[int], float]


@dataclass(frozen=True)
class Verdict:
    """What a failed run asks for: its ``kind`` and, for ``retry`` and ``snooze``, a delay
    in seconds (None: the backoff's)."""

    kind: Kind = "policy"
    delay: float | None = None


#: the verdict of a failure that no policy looked at
POLICY = Verdict()


def _classes(value: object, what: str, name: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, (tuple, list, set, frozenset)) else (value,)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in items):
        raise ConfigurationError(
            f"{what} {value!r} for task {name!r} must be an exception class or a tuple of "
            "them, such as (OSError, TimeoutError)")
    return tuple(items)


@dataclass(frozen=True)
class RetryPolicy:
    """A task's retry policy (``register_task(retry_on=..., dont_retry_on=..., backoff=...,
    jitter=...)``).

    Parameters:
        retry_on: the exceptions that are retried (None: all of them).
        dont_retry_on: exceptions that are never retried, checked first.
        backoff: the delay before retry n (0-based): a list (its last entry repeats), or a
            callable ``backoff(n) -> seconds``; None: the app's exponential backoff.
        jitter: multiply a delay from ``backoff`` by a random factor from 0.5 to 1.0, so that
            calls failing together do not come back together.
    """

    retry_on: tuple[type[BaseException], ...] | None = None
    dont_retry_on: tuple[type[BaseException], ...] = ()
    backoff: tuple[float, ...] | Callable[[int], float] | None = None
    jitter: bool = True

    @classmethod
    def build(cls, name: str, *, retry_on: object = None, dont_retry_on: object = (),
              backoff: object = None, jitter: object = True) -> RetryPolicy:
        """A policy from ``register_task``'s arguments, checked: a ConfigurationError names a
        wrong value of task ``name`` and the fix."""
        delays: tuple[float, ...] | Callable[[int], float] | None
        if backoff is None or callable(backoff):
            delays = backoff
        elif isinstance(backoff, (list, tuple)) and backoff and all(
                not isinstance(d, bool) and isinstance(d, (int, float)) and 0 <= d < float("inf")
                for d in backoff):
            delays = tuple(float(d) for d in backoff)
        else:
            raise ConfigurationError(
                f"backoff {backoff!r} for task {name!r} must be a non-empty list of seconds "
                ">= 0, such as [1, 5, 30], or a callable backoff(attempt) -> seconds")
        if not isinstance(jitter, bool):
            raise ConfigurationError(f"jitter {jitter!r} for task {name!r} must be True or False")
        return cls(retry_on=None if retry_on is None else _classes(retry_on, "retry_on", name),
                   dont_retry_on=_classes(dont_retry_on, "dont_retry_on", name),
                   backoff=delays, jitter=jitter)

    def verdict(self, exc: BaseException | None) -> Verdict:
        """The verdict of a run that raised ``exc`` (None: an error with no exception
        object, such as a callback-style task's error dict: retried as the policy allows)."""
        if isinstance(exc, Retry):
            return Verdict("retry", exc.delay)
        if isinstance(exc, Snooze):
            return Verdict("snooze", exc.delay)
        if isinstance(exc, Discard):
            return Verdict("discard")
        if exc is None:
            return POLICY
        if isinstance(exc, self.dont_retry_on) or (
                self.retry_on is not None and not isinstance(exc, self.retry_on)):
            return Verdict("final")
        return POLICY

    def delay(self, attempt: int, default: Callable[[int], float]) -> float:
        """Seconds before retry ``attempt`` (0-based): from ``backoff`` (with jitter), else
        ``default(attempt)`` (the app's backoff, which has its own jitter)."""
        if self.backoff is None:
            return default(attempt)
        if callable(self.backoff):
            seconds = float(self.backoff(attempt))
        else:
            seconds = self.backoff[min(attempt, len(self.backoff) - 1)]
        seconds = max(seconds, 0.0)
        return seconds * random.uniform(0.5, 1.0) if self.jitter else seconds


#: the policy of a task registered without one
DEFAULT_POLICY = RetryPolicy()
