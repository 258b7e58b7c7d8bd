"""Celery 5 doing the benchmark's work: RabbitMQ broker, Redis results."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench",
             broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
             backend=os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/13"))
app.conf.task_default_queue = "bench_celery"
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i
