"""Dramatiq doing the benchmark's work: RabbitMQ broker, Redis results."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL",
                                           "amqp://guest:guest@127.0.0.1:5672/%2F"))
broker.add_middleware(Results(backend=RedisBackend(
    url=os.environ.get("BENCH_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/13"))))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench_dramatiq", store_results=True)
def noop(i: int) -> int:
    return i
