"""Worker heartbeats over AMQP, as records of the RabbitMQ stream ``ivy.workers``
(docs/internals/amqp.md, "Worker heartbeats")."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions

log = logging.getLogger("ivy.amqp")

#: the stream of heartbeats
STREAM = "ivy.workers"
#: seconds of the stream a reader looks at: the longest heartbeat interval that works
LOOKBACK = 300.0
#: how long RabbitMQ keeps the stream's segments
MAX_AGE = "15m"
STREAM_ARGUMENTS: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": MAX_AGE,
                                    "x-stream-max-segment-size-bytes": 1_000_000}
#: a reader acknowledges the records it read in batches of this many
ACK_EVERY = 200
#: the longest a reader waits for the next record before it gives up on finding its probe
READ_TIMEOUT = 10.0


def heartbeat(name: str, info: dict[str, Any], ttl: float) -> bytes:
    return json.dumps({"name": name, "info": info, "expires": time.time() + ttl}).encode()


def removal(name: str) -> bytes:
    return json.dumps({"name": name, "removed": True}).encode()


def read_alive(params: pika.URLParameters) -> list[dict[str, Any]]:
    """The heartbeats of the workers alive when the listing began, ordered by name
    (docs/internals/amqp.md, "Worker heartbeats")."""
    now = time.time()  # reading takes a while (0.1 s or more): alive as of the request
    last: dict[str, dict[str, Any]] = {}
    conn = pika.BlockingConnection(params)
    try:
        channel = conn.channel()
        channel.queue_declare(STREAM, durable=True, arguments=STREAM_ARGUMENTS)
        channel.confirm_delivery()
        probe = uuid.uuid4().hex
        channel.basic_publish("", STREAM, json.dumps({"probe": probe}).encode(),
                              pika.BasicProperties(delivery_mode=2))
        channel.basic_qos(prefetch_count=1000)
        found = False

        def on_record(ch: Any, method: Any, props: Any, body: bytes) -> None:
            # acknowledged in batches, only so that the broker keeps sending (a stream's
            # consumer gets credit back from its acks)
            nonlocal found
            if method.delivery_tag % ACK_EVERY == 0:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if found:
                return
            try:
                record = json.loads(body)
            except ValueError:
                return  # not ours: another client's record
            if not isinstance(record, dict):
                return
            if record.get("probe") == probe:
                found = True
            elif isinstance(record.get("name"), str):
                last[record["name"]] = record

        since = datetime.fromtimestamp(time.time() - LOOKBACK, tz=UTC)
        channel.basic_consume(STREAM, on_record, arguments={"x-stream-offset": since})
        deadline = time.monotonic() + READ_TIMEOUT
        while not found:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream {STREAM!r} did not reach this reader's probe "
                                   f"record within {READ_TIMEOUT} s")
            conn.process_data_events(time_limit=0.05)
    finally:
        _close(conn)
    return [r["info"] for _, r in sorted(last.items())
            if not r.get("removed") and isinstance(r.get("expires"), (int, float))
            and r["expires"] > now and isinstance(r.get("info"), dict)]


def _close(conn: pika.BlockingConnection) -> None:
    """Close a reader's connection. Closing cancels the consumer, and pika gives back
    (basic.reject) the records it received and did not dispatch yet, which a stream refuses by
    closing the connection (540 NOT_IMPLEMENTED): the listing is complete by then, nothing is
    lost, so that error is only logged at debug level."""
    try:
        if conn.is_open:
            conn.close()
    except pika.exceptions.AMQPError:
        log.debug("closing the heartbeat reader's connection raised", exc_info=True)
