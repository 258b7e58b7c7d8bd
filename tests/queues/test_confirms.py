"""Asynchronous confirms: delayed_call returns once the message is handed over, and whatever the
broker then says reaches the call (PublishError), call.sent(), send_task(confirm=True),
ivy.flush() and close(). On the real RabbitMQ: a queue that rejects publishes when full gives
real nacks; a port where nothing listens gives missing confirms."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from common import wait_for
from servers import free_port

import ivy
from ivy.call import Call
from ivy.outbox import Outbox

pika = pytest.importorskip("pika")


@pytest.fixture
def full_queue(amqp_url: str) -> Iterator[str]:
    """Queue "q" declared by another client to hold one message and nack the rest."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    channel.queue_delete("q")
    channel.queue_declare("q", durable=True, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish"})
    yield "q"
    channel.queue_delete("q")
    conn.close()


def echo_app(amqp_url: str, redis_url: str, **options: Any) -> ivy.Ivy:
    app = ivy.Ivy(amqp_url, redis_url, **options)

    @app.register_task(name="t.echo", queue="q")
    def echo(x: Any) -> Any:
        return x

    return app


def test_a_nacked_message_fails_its_call(amqp_url: str, redis_url: str, full_queue: str
                                         ) -> None:
    app = echo_app(amqp_url, redis_url)
    errors: list[Any] = []
    try:
        # Given a queue that holds one message; when two calls are sent (nobody consumes)
        first = app.delayed_call("t.echo", 1)
        first.sent(10)  # the broker has it
        second = app.delayed_call("t.echo", 2, callback=lambda err, result: errors.append(err))
        # Then the second fails: sent(), result(), its callback and flush() all say so
        with pytest.raises(ivy.PublishError, match="refused"):
            second.sent(10)
        with pytest.raises(ivy.PublishError, match="refused"):
            second.result(10)
        assert second.status == "errored"
        assert len(errors) == 1 and isinstance(errors[0], ivy.PublishError)
        assert second.id not in app.pending_calls() and first.id in app.pending_calls()
        with pytest.raises(ivy.PublishError, match="1 message"):
            app.flush(10)
        app.flush(10)  # reported once
        # and with confirm=True the send itself raises
        with pytest.raises(ivy.PublishError, match="refused"):
            app.send_task("t.echo", [3], confirm=True)
    finally:
        app.close()


def test_no_confirm_within_publish_timeout_fails_the_call(redis_url: str) -> None:
    # Given a broker that is not there
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/%2F?publish_timeout=0.5"
    app = echo_app(url, redis_url)
    try:
        # When a call is sent, delayed_call returns at once (nothing to wait for yet)
        call = app.delayed_call("t.echo", 1)
        assert not call._send.done()  # type: ignore[union-attr]
        # Then after publish_timeout it fails, loudly and without the password
        with pytest.raises(ivy.PublishError) as exc:
            call.result(20)
        assert "no confirm" in str(exc.value) and "secret" not in str(exc.value)
        with pytest.raises(ivy.PublishError):
            app.flush(5)
    finally:
        app.close(timeout=1)


def test_a_confirm_missed_after_close_names_the_last_connection_error() -> None:
    """The backend closed (an app's close() waits less than publish_timeout) before its
    watchdog gave up on a message: the error still says why the connection failed."""
    from ivy.queues.amqp import AMQPQueueBackend

    # Given a broker that is not there, and a message handed over to reach it
    backend = AMQPQueueBackend(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
                               publish_timeout=1)
    [future] = backend.send_async("q", [b"{}"], queue="q")
    link = backend._link()
    wait_for(lambda: "refused" in link.last_error, message="a refused connection")
    # When the backend closes before the message's publish_timeout passed
    backend.close()
    # Then the message fails with the refused connection as the reason, not "none"
    error = future.exception(10)
    assert isinstance(error, ivy.PublishError)
    assert "Connection refused" in str(error) and "error: none" not in str(error)


def test_sent_times_out_while_unconfirmed(redis_url: str) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?publish_timeout=30"
    app = echo_app(url, redis_url)
    try:
        call = app.delayed_call("t.echo", 1)
        with pytest.raises(ivy.PublishTimeout):
            call.sent(0.2)
        with pytest.raises(ivy.PublishTimeout, match="1 message"):
            app.flush(0.2)
        assert isinstance(ivy.PublishTimeout("x"), TimeoutError)
    finally:
        app.close(timeout=0.5)


def test_flush_and_close_wait_for_confirms(amqp_url: str, redis_url: str) -> None:
    app = echo_app(amqp_url, redis_url)
    calls = [app.delayed_call("t.echo", i) for i in range(200)]
    app.flush(20)
    for call in calls:
        call.sent(0)  # every one confirmed already
    # close() flushes what was sent just before it
    last = app.delayed_call("t.echo", "last")
    app.close()
    last.sent(0)
    checker = ivy.Ivy(amqp_url, redis_url)
    assert checker.queue_backend.size("q") == 201
    checker.close()


def test_calls_sent_while_the_connection_drops_complete_or_fail(amqp_url: str,
                                                               redis_url: str) -> None:
    import shutil
    import subprocess

    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.fail("rabbitmqctl is not on PATH")
    app = echo_app(amqp_url, redis_url)
    worker = echo_app(amqp_url, redis_url)
    worker.listen(queue="q", concurrency=4, block=False)
    try:
        calls = []
        dropped = threading.Event()

        def drop() -> None:
            subprocess.run([rabbitmqctl, "close_all_connections", "ivy test"],
                           capture_output=True, timeout=60)
            dropped.set()

        # When the broker closes every connection while calls are being sent
        for i in range(300):
            calls.append(app.delayed_call("t.echo", i))
            if i == 50:
                threading.Thread(target=drop, daemon=True).start()
        assert dropped.wait(60)
        # Then each call either completes or fails with PublishError: none is silently lost
        outcomes = []
        for call in calls:
            try:
                outcomes.append(call.result(60))
            except ivy.PublishError:
                outcomes.append("failed")
        assert all(o == i or o == "failed" for i, o in enumerate(outcomes))
        assert outcomes.count("failed") == 0  # unconfirmed messages are sent again
    finally:
        worker.close()
        app.close()


def test_the_outbox_bounds_unconfirmed_messages() -> None:
    failed: list[Any] = []
    outbox = Outbox(lambda call, error: failed.append(error), max_unconfirmed=2)
    futures: list[Future[None]] = [Future() for _ in range(3)]
    calls = [Call(f"c{i}", "t.x", "q") for i in range(3)]
    outbox.track(calls[0], futures[0])
    outbox.track(calls[1], futures[1])
    third = threading.Thread(target=outbox.track, args=(calls[2], futures[2]), daemon=True)
    third.start()
    # the third blocks while two wait for confirms
    third.join(0.3)
    assert third.is_alive() and outbox.unconfirmed == 2
    futures[0].set_result(None)
    third.join(5)
    assert not third.is_alive() and outbox.unconfirmed == 2
    futures[1].set_exception(ivy.PublishError("refused"))
    futures[2].set_result(None)
    wait_for(lambda: outbox.unconfirmed == 0)
    assert len(failed) == 1
    with pytest.raises(ivy.PublishError, match="1 message"):
        outbox.flush(1)


def test_confirm_waits_for_every_first_message_of_a_workflow(
        amqp_url: str, redis_url: str, full_queue: str) -> None:
    # Given a group whose members go to two queues, the first of them full (issue 20, row 14)
    app = echo_app(amqp_url, redis_url)

    @app.register_task(name="t.other", queue="qa")
    def other(x: Any) -> Any:
        return x

    try:
        app.delayed_call("t.echo", 0).sent(10)  # the full queue holds one message now
        echo, other_task = app.registry.resolve("t.echo"), app.registry.resolve("t.other")
        # When the group is sent with confirm=True, the refused member's queue first
        # Then the send raises: the call waits for every first message, not the last one
        with pytest.raises(ivy.PublishError, match="refused"):
            app.send_task(ivy.group(echo.s(1), other_task.s(2)), [], confirm=True)
    finally:
        app.close()


def test_all_of_fails_with_the_first_error_and_waits_for_both() -> None:
    from ivy.call import _all_of

    first, second = Future[None](), Future[None]()
    both = _all_of(first, second)
    first.set_result(None)
    assert not both.done()  # one send is still out
    second.set_exception(ivy.PublishError("refused"))
    assert isinstance(both.exception(0), ivy.PublishError)
    ok = _all_of(f := Future[None](), g := Future[None]())
    g.set_result(None)
    f.set_result(None)
    assert ok.exception(0) is None
