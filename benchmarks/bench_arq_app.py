"""arq doing the benchmark's work: its Redis queue, its results in Redis (its defaults: the
worker polls its queue and a producer its result every 0.5 s)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings

URL = os.environ.get("BENCH_ARQ_REDIS", "redis://127.0.0.1:6379/13")
QUEUE = "bench_arq"


async def noop(ctx: dict[str, Any], i: int) -> int:
    return i


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    queue_name = QUEUE
    max_jobs = 4
