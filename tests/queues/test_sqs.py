"""SQS through boto3 against moto's server over real HTTP: the contract suite, a killed worker
whose message reappears after its visibility timeout, raw bad messages, the size limit."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from contract import QueueBackendContract, qname, take
from workers import killed_worker_task_completes_once, start_worker

import ivy
from ivy.queues.base import QueueBackend

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

AUTH = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def make_backend(endpoint: str) -> Any:
    from ivy.queues.sqs import SQSQueueBackend

    return SQSQueueBackend(region=REGION, endpoint_url=endpoint, auth=AUTH)


class TestSQSQueue(QueueBackendContract):
    short = 1.0  # SQS counts delays and visibility in whole seconds
    retry_replaces_body = False  # a retry changes the received message's visibility
    deletes_expired_dead_letters = False  # SQS's retention of Q-dead: 60 s at least
    # SQS standard queues may hand one message to two receivers at once ("at least once");
    # moto's server does it too under concurrent ReceiveMessage calls (seen with plain boto3:
    # 201 and 202 receipts of 200 messages in 2 of 5 runs of 3 threads)
    concurrent_receives_are_exclusive = False

    @pytest.fixture
    def backend(self, sqs_endpoint: str) -> Iterator[QueueBackend]:
        b = make_backend(sqs_endpoint)
        yield b
        b.close()

    def test_unacked_message_comes_back_after_reservation(self, backend: QueueBackend) -> None:
        # SQS lets a stale receipt handle delete a message received again since ("the request
        # succeeds, but the message might not be deleted"); harmless for ivy, which deletes only
        # after the task's outcome was recorded. The rest of the contract holds.
        q = qname()
        backend.publish(q, b"job")
        lost = backend.consume(q, reserve_time=1)
        first = lost.get(5)
        assert first is not None and first.delivery_count == 1
        other = backend.consume(q, reserve_time=30)
        again = other.get(20)
        assert again is not None and again.body == b"job"
        assert again.delivery_count == 2
        again.ack()
        assert backend.size(q) == 0
        other.close()

    def test_fifo_queue(self, backend: QueueBackend) -> None:
        q = f"{qname()}.fifo"
        for i in range(3):
            backend.publish(q, f"m{i}".encode())
        consumer = backend.consume(q, prefetch=10)
        assert take(consumer, 3) == [b"m0", b"m1", b"m2"]
        consumer.close()


def test_size_limit_at_exactly_the_boundary(sqs_endpoint: str) -> None:
    from ivy.queues.sqs import MAX_MESSAGE_BYTES

    backend = make_backend(sqs_endpoint)
    q = qname()
    backend.publish(q, b"x" * MAX_MESSAGE_BYTES)  # exactly the limit: accepted
    with pytest.raises(ivy.MessageTooLarge, match="262145 bytes is over SQS's limit"):
        backend.publish(q, b"x" * (MAX_MESSAGE_BYTES + 1))
    assert backend.size(q) == 1
    # and through the API, refused at delayed_call before any request is sent
    app = ivy.Ivy(backend, "memory://sqs-size", max_message_bytes=10 * MAX_MESSAGE_BYTES)

    @app.register_task(name="t.big", queue=q)
    def big(data: str) -> None: ...

    with pytest.raises(ivy.IvyError, match="over SQS's limit"):
        app.delayed_call(big, "y" * MAX_MESSAGE_BYTES)
    assert backend.size(q) == 1
    assert app.pending_calls() == []
    app.close()
    backend.close()


def test_api_round_trip_and_bad_messages(sqs_endpoint: str) -> None:
    backend = make_backend(sqs_endpoint)
    q = qname()
    app = ivy.Ivy(backend, f"memory://{uuid.uuid4().hex}", retry_base_delay=0.5)
    tries: list[int] = []

    @app.register_task(name="t.add", queue=q)
    def add(a: int, b: int) -> int:
        return a + b

    @app.register_task(name="t.flaky", queue=q, max_retries=2)
    def flaky() -> int:
        tries.append(1)
        if len(tries) < 2:
            raise ValueError("once")
        return len(tries)

    app.listen(queue=q, block=False, concurrency=2)
    assert app.delayed_call(add, 2, 3).result(30) == 5
    assert app.delayed_call(flaky).result(30) == 2  # retried through the visibility timeout
    # raw bad messages sent with boto3 land in Q-dead with reasons
    client = backend.client
    url = backend.queue_url(q)
    bad = {"{not json": "is not valid json",
           json.dumps({"ivy": 1, "id": "a", "name": "t.add", "args": [1]}):
               "wrong arguments for task 't.add'",
           json.dumps({"ivy": 1, "id": "b", "name": "os.system", "args": ["ls"]}):
               "unknown task 'os.system'"}
    for body in bad:
        client.send_message(QueueUrl=url, MessageBody=body)
    client.send_message(QueueUrl=url, MessageBody='{"name":"t.add","options":{},"args":[1,1]}')
    wait_for(lambda: len(backend.dead_letters(q)) == 3, timeout=30, message="3 dead letters")
    reasons = {d.body.decode(): d.reason for d in backend.dead_letters(q)}
    for body, reason in bad.items():
        assert reason in reasons[body]
    assert app.delayed_call(add, 20, 22).result(30) == 42  # still serving
    wait_for(lambda: backend.size(q) == 0, timeout=30, message="the queue to drain")
    app.close()
    backend.close()


@pytest.mark.slow
def test_killed_worker_message_reappears_after_visibility_timeout(
    sqs_endpoint: str, tmp_path: Path
) -> None:
    # A bare sqs:// takes region, endpoint and credentials from boto3's environment.
    env = {**os.environ, "AWS_ENDPOINT_URL_SQS": sqs_endpoint, "AWS_DEFAULT_REGION": REGION,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    notifier = f"sqlite:///{tmp_path / 'n.db'}"

    backend = make_backend(sqs_endpoint)
    app = ivy.Ivy(backend, notifier)
    try:
        killed_worker_task_completes_once(
            app, lambda: start_worker("sqs://", notifier, env=env), tmp_path)
    finally:
        app.close()
        backend.close()
