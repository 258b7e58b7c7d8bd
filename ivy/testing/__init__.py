"""Testing code that sends ivy calls: :func:`capture`, :func:`inline`, :func:`drain` and
:class:`FakeClock`; the pytest plugin is :mod:`ivy.testing.plugin` (docs/guides/testing.md,
docs/internals/integrations.md)."""

from __future__ import annotations

from ivy.testing.capture import Sent, SentCall, capture
from ivy.testing.clock import FakeClock
from ivy.testing.running import (
    MAX_INLINE_RUNS,
    DrainTimeout,
    InlineLimitExceeded,
    drain,
    inline,
)

__all__ = ["MAX_INLINE_RUNS", "DrainTimeout", "FakeClock", "InlineLimitExceeded", "Sent",
           "SentCall", "capture", "drain", "inline"]
