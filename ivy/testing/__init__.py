"""Testing code that sends ivy calls: record the sends (:func:`capture`), run them at send
(:func:`inline`) or run what is queued (:func:`drain`), with time that moves only when the
test moves it (:class:`FakeClock`). The pytest plugin (:mod:`ivy.testing.plugin`, loaded by
pytest when ivy is installed) gives the fixtures ``ivy_app`` and ``ivy_worker`` and the
marker ``@pytest.mark.ivy(mode=...)``. See docs/guides/testing.md."""

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
