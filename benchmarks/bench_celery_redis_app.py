"""Celery 5 doing the benchmark's work on Redis alone: Redis broker, Redis results."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/13")
app = Celery("bench_redis", broker=URL, backend=URL)
app.conf.task_default_queue = "bench_celery_redis"
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop_redis")
def noop(i: int) -> int:
    return i
