"""The original README's producer/worker split on the production pairing: RabbitMQ carries the
work, Redis carries the results back.

    python examples/production.py worker      # in one terminal (or several)
    python examples/production.py producer    # in another: sends 20 calls, prints the results

URLs come from IVY_QUEUE_URL / IVY_NOTIFIER_URL, defaulting to the local RabbitMQ and Redis.
Needs ``pip install 'ivy-queue[amqp,redis]'``. On Redis alone (Streams for the work, pub/sub
for the results), set both to the Redis URL:

    IVY_QUEUE_URL=redis://127.0.0.1:6379/0 python examples/production.py worker
"""

from __future__ import annotations

import math
import os
import sys

import ivy

QUEUE_URL = os.environ.get("IVY_QUEUE_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
NOTIFIER_URL = os.environ.get("IVY_NOTIFIER_URL", "redis://127.0.0.1:6379/0")


@ivy.register_task(name="testpackage.factorial", queue="testpackage", retry=True,
                   max_retries=5, timeout=60)
def factorial(number: int) -> int:
    return math.factorial(number)


def producer(count: int = 20) -> int:
    ivy.setup_queue(QUEUE_URL)
    ivy.start_notification_consumer(NOTIFIER_URL)
    try:
        calls = ivy.delayed_calls(factorial, [(n,) for n in range(count)])
        for n, call in enumerate(calls):
            print(f"factorial({n}) = {call.result(timeout=60)}")
        return 0
    finally:
        ivy.close()


def worker() -> int:
    ivy.start_notification_producer(NOTIFIER_URL)
    ivy.listen(QUEUE_URL, queue="testpackage", concurrency=4)  # until SIGTERM / Ctrl-C
    ivy.close()
    return 0


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role not in ("producer", "worker"):
        sys.exit("usage: python examples/production.py producer|worker")
    sys.exit(producer() if role == "producer" else worker())
