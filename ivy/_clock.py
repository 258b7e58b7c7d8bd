"""The two clocks of ivy that a test may drive (:class:`ivy.testing.FakeClock` sets them):
``wall``, Unix seconds, for the times a message carries (``created_ms``, ``eta``,
``unique_until``: :func:`ivy.message.now_ms`) and the worker's checks of them; ``delays``,
the seconds by which the memory backend times its delayed messages (delayed calls, retries,
snoozes, deferrals). Nothing else reads them: leases, timeouts and the other backends keep
the real clocks."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Unix seconds, as time.time()
wall: Callable[[], float] = time.time
#: the memory backend's clock for delayed messages, as time.monotonic()
delays: Callable[[], float] = time.monotonic
