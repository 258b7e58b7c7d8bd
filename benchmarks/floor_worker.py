"""The floor's worker: bare pika and redis-py doing the I/O an ivy worker does per task
(consume with manual ack, SET with TTL + PUBLISH of the result in one pipeline, ack)."""

from __future__ import annotations

import json
import os
import sys

import pika
import redis

AMQP = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS = os.environ.get("BENCH_FLOOR_REDIS", "redis://127.0.0.1:6379/13")
QUEUE = "bench_floor"


def main() -> None:
    r = redis.Redis.from_url(REDIS)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.basic_qos(prefetch_count=4)

    def on_message(ch, method, props, body):  # type: ignore[no-untyped-def]
        msg = json.loads(body)
        result = json.dumps({"id": msg["id"], "result": msg["args"][0]})
        pipe = r.pipeline(transaction=False)
        pipe.set("floor:" + msg["id"], result, ex=3600)
        pipe.publish(msg["reply_to"], result)
        pipe.execute()
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_message)
    print("ready", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
