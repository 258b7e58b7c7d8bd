"""Dramatiq doing the benchmark's work on Redis alone: Redis broker, Redis results."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ.get("BENCH_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/13")
broker = RedisBroker(url=URL, namespace="bench-dramatiq")
broker.add_middleware(Results(backend=RedisBackend(url=URL, namespace="bench-dramatiq-results")))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench_dramatiq_redis", store_results=True)
def noop(i: int) -> int:
    return i
