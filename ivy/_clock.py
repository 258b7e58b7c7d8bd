"""The two clocks of ivy that a test may drive (:class:`ivy.testing.FakeClock` sets them):
``wall``, for the times a message carries, and ``delays``, for the memory backend's delayed
messages."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Unix seconds, as time.time()
wall: Callable[[], float] = time.time
#: the memory backend's clock for delayed messages, as time.monotonic()
delays: Callable[[], float] = time.monotonic
