"""RabbitMQ management for the AMQP backend, on short-lived blocking connections: queue sizes, the
dead-letter tools (list, requeue, purge) and deleting queues (docs/internals/amqp.md)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from ivy._amqp.topology import DEAD_AT_HEADER, DEAD_ID_HEADER, REASON_HEADER, dead_queue
from ivy.queues.base import DeadLetter, Rewrite

#: seconds a dead-letter listing waits for the letters it looked at to be back in ``Q.dead``
RETURN_WAIT = 2.0

#: the nodes to connect to, in order (pika takes the first that answers)
Nodes = Sequence[pika.URLParameters]


def _count(params: Nodes, op: Callable[[BlockingChannel], Any]) -> int:
    """The message count a queue operation answers with; 0 when the queue does not exist."""
    conn = pika.BlockingConnection(params)
    try:
        try:
            frame = op(conn.channel())
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return 0
            raise
        return int(frame.method.message_count)
    finally:
        conn.close()


def declare(params: Nodes, queue: str, arguments: dict[str, Any]) -> str | None:
    """Declare ``queue`` durable with ``arguments``; None when done, else the broker's reply
    text of a 406 PRECONDITION_FAILED (it exists with other arguments)."""
    conn = pika.BlockingConnection(params)
    try:
        conn.channel().queue_declare(queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            return str(exc.reply_text)
        raise
    finally:
        conn.close()
    return None


def size(params: Nodes, queue: str) -> int:
    """Messages ready in ``queue`` (0 when it does not exist)."""
    return _count(params, lambda channel: channel.queue_declare(queue, passive=True))


def _open_dead(conn: pika.BlockingConnection, queue: str) -> tuple[BlockingChannel, int] | None:
    """A channel and the message count of ``Q.dead``; None when it does not exist."""
    channel = conn.channel()
    try:
        frame = channel.queue_declare(dead_queue(queue), passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    return channel, int(frame.method.message_count)


def dead_letters(params: Nodes, queue: str, limit: int, cutoff: float = 0.0
                 ) -> list[DeadLetter]:
    """Peek at ``Q.dead``: read up to ``limit`` and put them all back, but for those dead
    before ``cutoff`` (``time.time()``; expired), which are deleted: RabbitMQ drops an
    expired message only at the head of a queue, and not always one that went back there."""
    conn = pika.BlockingConnection(params)
    found: list[DeadLetter] = []
    try:
        opened = _open_dead(conn, queue)
        if opened is None:
            return []
        channel, count = opened
        expired = 0
        for _ in range(limit):
            method, props, body = channel.basic_get(dead_queue(queue), auto_ack=False)
            if method is None:
                break
            letter = _dead_letter(queue, props, body)
            if letter.time < cutoff:
                channel.basic_ack(method.delivery_tag)
                expired += 1
                continue
            found.append(letter)
        channel.close()  # every unacked message goes back, in order
        _wait_back(conn, queue, count - expired)
    finally:
        conn.close()
    return found


def requeue_dead(params: Nodes, queue: str, ids: Collection[str] | None,
                 rewrite: Rewrite | None,
                 send: Callable[[bytes, int], Future[None]]) -> int:
    """Send each chosen dead letter with ``send(body, priority)`` (the backend's confirmed
    publish to ``queue``), then acknowledge it in ``Q.dead`` once its copy is confirmed.
    Looks at no more messages than ``Q.dead`` held at the start."""
    wanted = None if ids is None else set(ids)
    conn = pika.BlockingConnection(params)
    moved = 0
    try:
        opened = _open_dead(conn, queue)
        if opened is None:
            return 0
        channel, count = opened
        sent: list[tuple[int, Future[None]]] = []
        for _ in range(count):
            if wanted is not None and not wanted:
                break
            method, props, body = channel.basic_get(dead_queue(queue), auto_ack=False)
            if method is None:
                break
            letter = _dead_letter(queue, props, body)
            if wanted is not None:
                if letter.id not in wanted:
                    continue  # unacked: back in Q.dead when the channel closes
                wanted.discard(letter.id)
            new_body, priority = rewrite(body) if rewrite else (body, None)
            sent.append((method.delivery_tag, send(
                new_body, (props.priority or 0) if priority is None else priority)))
            if len(sent) >= 100:
                moved += _ack_confirmed(channel, sent)
        moved += _ack_confirmed(channel, sent)
        channel.close()
        _wait_back(conn, queue, count - moved)
    finally:
        conn.close()
    return moved


def _wait_back(conn: pika.BlockingConnection, queue: str, expected: int,
               timeout: float = RETURN_WAIT) -> None:
    """Wait (up to ``timeout`` s) until ``Q.dead`` holds ``expected`` ready messages again:
    those a closed channel left unacknowledged go back asynchronously (a quorum queue
    through its log), and a listing right after this one must see them."""
    channel = conn.channel()
    deadline = time.monotonic() + timeout
    while True:
        frame = channel.queue_declare(dead_queue(queue), passive=True)
        if int(frame.method.message_count) >= expected or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    channel.close()


def purge_dead(params: Nodes, queue: str) -> int:
    """Delete the messages of ``Q.dead``; return how many."""
    return _count(params, lambda channel: channel.queue_purge(dead_queue(queue)))


def delete_queues(params: Nodes, names: list[str]) -> None:
    """Delete queues (with their messages); for tests and tools."""
    conn = pika.BlockingConnection(params)
    try:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        conn.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _dead_letter(queue: str, props: BasicProperties, body: bytes) -> DeadLetter:
    """A message of ``Q.dead`` as a DeadLetter, with a stable id (docs/internals/amqp.md). One
    that RabbitMQ dead-lettered itself (a quorum queue's delivery limit) has no ivy headers:
    its reason and time come from the broker's ``x-death`` header."""
    headers = props.headers or {}
    reason = _text(headers.get(REASON_HEADER, ""))
    stamp = headers.get(DEAD_AT_HEADER, 0)
    when = float(stamp) if isinstance(stamp, (int, float)) else 0.0
    if not reason:
        reason, when = _broker_death(headers, when)
    ident = headers.get(DEAD_ID_HEADER) or props.message_id
    if not ident:
        digest = hashlib.sha256(body + b"\0" + reason.encode() + b"\0" + str(when).encode())
        ident = "sha256-" + digest.hexdigest()[:24]
    return DeadLetter(queue, body, reason, when, _text(ident))


def _broker_death(headers: dict[str, Any], when: float) -> tuple[str, float]:
    """The reason and time of the broker's own dead-lettering, from ``x-death``."""
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(
        deaths[0], dict) else {}
    why = _text(first.get("reason") or headers.get("x-first-death-reason") or "")
    if not why:
        return "", when
    source = _text(first.get("queue") or headers.get("x-first-death-queue") or "?")
    stamp = first.get("time")
    if isinstance(stamp, datetime):
        when = stamp.timestamp()
    if why == "delivery_limit":
        return (f"delivery limit reached: RabbitMQ dead-lettered it from {source!r} after "
                "as many deliveries without an ack as its x-delivery-limit allows (did it "
                "crash or stop its workers?)"), when
    return f"dead-lettered by RabbitMQ from {source!r}: {why}", when


def _ack_confirmed(channel: BlockingChannel, sent: list[tuple[int, Future[None]]]) -> int:
    """Acknowledge the dead letters whose copies the broker confirmed, in order; raise the
    first PublishError (the rest stay in ``Q.dead``). Empties ``sent``."""
    acked = 0
    try:
        for tag, future in sent:
            future.result()
            channel.basic_ack(tag)
            acked += 1
    finally:
        sent.clear()
    return acked
