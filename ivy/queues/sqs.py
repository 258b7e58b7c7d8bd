"""``sqs://``: Amazon SQS (or an SQS-compatible service) as a queue backend, through boto3
(``pip install 'ivy-queue[sqs]'``). How it works: docs/internals/cloud.md."""

from __future__ import annotations

import base64
import contextlib
import math
import threading
import uuid
from concurrent.futures import Future
from typing import Any, Self

import boto3
import botocore.config
import botocore.exceptions

from ivy.errors import ConfigurationError, MessageTooLarge, PublishError
from ivy.queues._batching import BatchSender, Outgoing, by_queue
from ivy.queues._cloud import DEAD_HOLD, CloudQueueBackend
from ivy.queues.base import (
    DEFAULT_DEAD_LETTER_TTL,
    Consumer,
    DeadLetter,
    Delivery,
    LongPollConsumer,
    dead_letter_ttl_option,
)

MAX_MESSAGE_BYTES = 262_144
MAX_DELAY = 900  # SQS's longest DelaySeconds
MAX_RETENTION = 1_209_600  # SQS's longest MessageRetentionPeriod: 14 days
MAX_VISIBILITY = 43_200  # 12 hours
REASON = "ivy-reason"
ENCODING = "ivy-encoding"
LONG_POLL = 20
#: How long an ack waits for SQS to confirm its delete.
DELETE_TIMEOUT = 60.0
#: A deleter thread with nothing to send for this long ends (the next delete starts another).
DELETER_IDLE = 5.0


def _text(body: bytes) -> tuple[str, dict[str, Any]]:
    """SQS bodies are text: send UTF-8 as it is, anything else base64-encoded."""
    try:
        text = body.decode("utf-8")
        if all(ch >= " " or ch in "\t\n\r" for ch in text) and "\ufffe" not in text:
            return text, {}
    except UnicodeDecodeError:
        pass
    return base64.b64encode(body).decode(), {
        ENCODING: {"DataType": "String", "StringValue": "base64"}}


def _bytes(message: dict[str, Any]) -> bytes:
    attrs = message.get("MessageAttributes") or {}
    if attrs.get(ENCODING, {}).get("StringValue") == "base64":
        return base64.b64decode(message["Body"])
    body: str = message["Body"]
    return body.encode("utf-8")


def dead_name(queue: str) -> str:
    return f"{queue.removesuffix('.fifo')}-dead.fifo" if queue.endswith(".fifo") else (
        f"{queue}-dead")


class SQSQueueBackend(CloudQueueBackend):
    supports_priority = False
    poll_seconds = float(LONG_POLL)

    def __init__(self, *, region: str | None = None, endpoint_url: str | None = None,
                 auth: dict[str, str] | None = None, message_group_id: str = "ivy",
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL) -> None:
        session = boto3.session.Session(**(auth or {}), region_name=region)
        self.client = session.client(
            "sqs", endpoint_url=endpoint_url, config=botocore.config.Config(
                connect_timeout=5, read_timeout=LONG_POLL + 10, max_pool_connections=50,
                retries={"max_attempts": 4, "mode": "standard"}))
        self.url = f"sqs://{endpoint_url or self.client.meta.endpoint_url}"
        self.message_group_id = message_group_id
        self.dead_letter_ttl = dead_letter_ttl_option(dead_letter_ttl,
                                                      f"the SQS queue backend {self.url}")
        self.max_message_bytes = max_message_bytes
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        self._sender = BatchSender(self._write, max_batch=10, name="ivy-sqs-send")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        auth = config.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise ConfigurationError("SQS 'auth' must be a dict with aws_access_key_id and "
                                     "aws_secret_access_key")
        return cls(region=config.get("region"), endpoint_url=config.get("endpoint_url"),
                   auth=auth, message_group_id=str(config.get("message_group_id", "ivy")),
                   dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL))

    def queue_url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is not None:
            return url
        with self._lock:
            try:
                url = str(self.client.get_queue_url(QueueName=queue)["QueueUrl"])
            except self.client.exceptions.QueueDoesNotExist:
                attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if (
                    queue.endswith(".fifo")) else {}
                if queue.removesuffix(".fifo").endswith("-dead"):
                    attributes["MessageRetentionPeriod"] = str(self._dead_retention())
                url = str(self.client.create_queue(QueueName=queue, Attributes=attributes)[
                    "QueueUrl"])
            self._urls[queue] = url
            return url

    def _dead_retention(self) -> int:
        """``MessageRetentionPeriod`` of a dead-letter queue ivy creates: ``dead_letter_ttl``
        within what SQS allows (60 s to 14 days; ``none`` gets the 14 days)."""
        ttl = self.dead_letter_ttl
        return MAX_RETENTION if ttl is None else min(max(round(ttl), 60), MAX_RETENTION)

    def _entry(self, queue: str, body: bytes, delay: float) -> dict[str, Any]:
        text, attributes = _text(body)
        size = len(text.encode("utf-8")) + sum(
            len(k) + len(v["DataType"]) + len(v["StringValue"]) for k, v in attributes.items())
        if size > self.max_message_bytes:
            raise MessageTooLarge(
                f"a message of {size} bytes is over SQS's limit of {self.max_message_bytes} "
                f"bytes for queue {queue!r}: pass a reference (an S3 key, a URL) instead of the "
                "data")
        entry: dict[str, Any] = {"MessageBody": text}
        if attributes:
            entry["MessageAttributes"] = attributes
        if queue.endswith(".fifo"):
            entry["MessageGroupId"] = self.message_group_id
        elif delay > 0:
            entry["DelaySeconds"] = min(MAX_DELAY, math.ceil(delay))
        return entry

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        entry = self._entry(queue, body, delay)
        self.client.send_message(QueueUrl=self.queue_url(queue), **entry)

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        entries = [self._entry(queue, body, delay) for body in bodies]
        url = self.queue_url(queue)
        for start in range(0, len(entries), 10):
            batch = [{"Id": str(i), **e} for i, e in enumerate(entries[start:start + 10])]
            result = self.client.send_message_batch(QueueUrl=url, Entries=batch)
            failed = result.get("Failed") or []
            if failed:
                raise RuntimeError(f"SQS refused {len(failed)} message(s) for queue {queue!r}: "
                                   f"{failed[0].get('Message')}")

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Asynchronous sends through a background thread that joins what producers hand it
        meanwhile into SendMessageBatch requests of up to 10. A message over the size limit is
        refused here, at once, with :class:`ivy.MessageTooLarge`."""
        for body in bodies:
            self._entry(queue, body, delay)  # the size check, before anything is queued
        return self._sender.send(queue, bodies, priority=priority, delay=delay, route=route)

    def _write(self, batch: list[Outgoing]) -> list[BaseException | None]:
        errors: list[BaseException | None] = [None] * len(batch)
        for queue, indexes in by_queue(batch).items():
            try:
                url = self.queue_url(queue)
                for start in range(0, len(indexes), 10):
                    chunk = indexes[start:start + 10]
                    result = self.client.send_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), **self._entry(queue, batch[i].body, batch[i].delay)}
                        for i in chunk])
                    for failure in result.get("Failed") or []:
                        errors[int(failure["Id"])] = PublishError(
                            f"SQS refused a message for queue {queue!r}: "
                            f"{failure.get('Code')}: {failure.get('Message')}")
            except Exception as exc:
                for i in indexes:
                    errors[i] = errors[i] or exc
        return errors

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return SQSConsumer(self, queue, prefetch, reserve_time)

    def size(self, queue: str) -> int:
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.queue_url(queue), AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return sum(int(v) for v in attrs.values())

    def _peek_dead(self, queue: str, limit: int) -> list[DeadLetter]:
        """Receive from ``Q-dead`` with visibility 0, so that nothing is hidden."""
        url = self.queue_url(dead_name(queue))
        found: dict[str, DeadLetter] = {}
        for _ in range(max(1, math.ceil(limit / 10)) * 2):
            messages = self.client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0,
                MessageAttributeNames=["All"], MessageSystemAttributeNames=["SentTimestamp"],
            ).get("Messages") or []
            if not messages:
                break
            for m in messages:
                reason = (m.get("MessageAttributes") or {}).get(REASON, {}).get(
                    "StringValue", "")
                sent = int((m.get("Attributes") or {}).get("SentTimestamp", "0")) / 1000
                found.setdefault(m["MessageId"], DeadLetter(queue, _bytes(m), reason, sent,
                                                            m["MessageId"]))
            if len(found) >= limit:
                break
        return sorted(found.values(), key=lambda d: d.time)[:limit]

    def _take_dead(self, queue: str) -> list[dict[str, Any]]:
        """A 1 s long poll, which asks every SQS server."""
        messages: list[dict[str, Any]] = self.client.receive_message(
            QueueUrl=self.queue_url(dead_name(queue)), MaxNumberOfMessages=10,
            VisibilityTimeout=DEAD_HOLD, WaitTimeSeconds=1,
            MessageAttributeNames=["All"]).get("Messages") or []
        return messages

    def _dead_id(self, message: dict[str, Any]) -> str:
        return str(message["MessageId"])

    def _dead_body(self, message: dict[str, Any]) -> bytes:
        return _bytes(message)

    def _send_again(self, queue: str, body: bytes) -> None:
        """On a FIFO queue each copy gets a fresh deduplication id, so that content-based
        deduplication does not drop it."""
        entry = self._entry(queue, body, 0.0)
        if queue.endswith(".fifo"):
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        self.client.send_message(QueueUrl=self.queue_url(queue), **entry)

    def _delete_dead(self, queue: str, message: dict[str, Any]) -> None:
        self.client.delete_message(QueueUrl=self.queue_url(dead_name(queue)),
                                   ReceiptHandle=message["ReceiptHandle"])

    def _delete_dead_batch(self, queue: str, batch: list[dict[str, Any]]) -> int:
        result = self.client.delete_message_batch(
            QueueUrl=self.queue_url(dead_name(queue)), Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        return len(result.get("Successful") or [])

    def _let_go(self, queue: str, held: list[dict[str, Any]]) -> None:
        dead_url = self.queue_url(dead_name(queue))
        for start in range(0, len(held), 10):
            with contextlib.suppress(botocore.exceptions.ClientError):
                self.client.change_message_visibility_batch(QueueUrl=dead_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(held[start:start + 10])])

    def queues(self) -> list[str]:
        names = []
        for url in self.client.list_queues().get("QueueUrls") or []:
            name = url.rsplit("/", 1)[-1]
            if not name.removesuffix(".fifo").endswith("-dead"):
                names.append(name)
        return sorted(names)

    def close(self) -> None:
        self._sender.close()
        with contextlib.suppress(Exception):
            self.client.close()


class SQSDelivery(Delivery):
    def __init__(self, consumer: SQSConsumer, message: dict[str, Any]) -> None:
        super().__init__()
        self._consumer = consumer
        self._backend = consumer.backend
        self._receipt: str = message["ReceiptHandle"]
        self.queue = consumer.queue
        self.body = _bytes(message)
        self.delivery_count = int((message.get("Attributes") or {}).get(
            "ApproximateReceiveCount", "1"))

    def _url(self) -> str:
        return self._backend.queue_url(self.queue)

    def _ack(self) -> None:
        self._consumer.delete(self._receipt)

    def _retry(self, delay: float, body: bytes | None) -> None:
        """Make the message visible again after ``delay`` (the body cannot change on SQS)."""
        self._visibility(delay)

    def _release(self) -> None:
        self._visibility(0)

    def _defer(self, delay: float) -> None:
        """Back until ``delay`` s from now without counting a receive: a fresh copy delayed
        until then (SQS cannot take back a receive count), or on a FIFO queue, where a copy
        would jump its group's order, the visibility changed (which counts as a receive)."""
        if self.queue.endswith(".fifo"):
            self._visibility(delay)
            return
        self._backend.client.send_message(QueueUrl=self._url(),
                                          **self._backend._entry(self.queue, self.body, delay))
        self._ack()

    def _visibility(self, seconds: float) -> None:
        self._backend.client.change_message_visibility(
            QueueUrl=self._url(), ReceiptHandle=self._receipt,
            VisibilityTimeout=min(MAX_VISIBILITY, max(0, math.ceil(seconds))))

    def _extend(self, seconds: float) -> None:
        self._visibility(seconds)

    def _dead_letter(self, reason: str) -> None:
        text, attributes = _text(self.body)
        attributes = {**attributes, REASON: {"DataType": "String",
                                             "StringValue": reason[:4000] or "-"}}
        dead = dead_name(self.queue)
        extra = {"MessageGroupId": self._backend.message_group_id} if dead.endswith(
            ".fifo") else {}
        self._backend.client.send_message(QueueUrl=self._backend.queue_url(dead),
                                          MessageBody=text, MessageAttributes=attributes,
                                          **extra)
        self._ack()


class SQSConsumer(LongPollConsumer):
    long_poll = LONG_POLL

    def __init__(self, backend: SQSQueueBackend, queue: str, prefetch: int,
                 reserve_time: float) -> None:
        super().__init__(queue)
        self.backend = backend
        self._prefetch = min(10, max(1, prefetch))
        self._visibility = min(MAX_VISIBILITY, max(1, math.ceil(reserve_time)))
        self._pending: list[tuple[str, threading.Event, list[str]]] = []
        self._pending_cond = threading.Condition()
        self._deleter: threading.Thread | None = None

    def _receive(self, wait: int) -> list[Delivery]:
        messages = self.backend.client.receive_message(
            QueueUrl=self.backend.queue_url(self.queue), MaxNumberOfMessages=self._prefetch,
            WaitTimeSeconds=wait, VisibilityTimeout=self._visibility,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"]).get("Messages") or []
        return [SQSDelivery(self, m) for m in messages]

    def delete(self, receipt: str) -> None:
        """Delete one message, in a batch with whatever other executors delete at the same
        moment (up to 10 a request); returns once SQS confirmed this one. Works after close()
        too: an in-flight task finishing during a graceful stop acknowledges through it."""
        done = threading.Event()
        errors: list[str] = []
        with self._pending_cond:
            self._pending.append((receipt, done, errors))
            self._pending_cond.notify()
            if self._deleter is None:
                self._deleter = threading.Thread(target=self._delete_loop,
                                                 name=f"ivy-sqs-delete-{self.queue}",
                                                 daemon=True)
                self._deleter.start()
        if not done.wait(DELETE_TIMEOUT):
            raise TimeoutError(f"SQS did not confirm a delete on queue {self.queue!r} in "
                               f"{DELETE_TIMEOUT:.0f} s")
        if errors:
            raise RuntimeError(f"SQS refused to delete a message of {self.queue!r}: "
                               f"{errors[0]}")

    def _delete_loop(self) -> None:
        """Send what is pending; end once nothing came for ``DELETER_IDLE`` s (at once when
        the consumer is closed). delete() starts a new thread when none runs."""
        while True:
            with self._pending_cond:
                if not self._pending and not self._closed:
                    self._pending_cond.wait(DELETER_IDLE)
                if not self._pending:
                    self._deleter = None  # under the condition: delete() sees it
                    return
                batch, self._pending = self._pending[:10], self._pending[10:]
            try:
                result = self.backend.client.delete_message_batch(
                    QueueUrl=self.backend.queue_url(self.queue),
                    Entries=[{"Id": str(i), "ReceiptHandle": r}
                             for i, (r, _, _) in enumerate(batch)])
                failed = {f["Id"]: f.get("Message", "") for f in result.get("Failed") or []}
            except Exception as exc:
                failed = {str(i): repr(exc) for i in range(len(batch))}
            for i, (_, done, errors) in enumerate(batch):
                if str(i) in failed:
                    errors.append(failed[str(i)])
                done.set()

    def close(self) -> None:
        super().close()
        with self._pending_cond:
            self._pending_cond.notify_all()  # an idle deleter ends now
