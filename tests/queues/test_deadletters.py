"""Dead-letter tools through the API (``app.dead_letters``, ``app.requeue_dead``,
``app.purge_dead``) on memory, SQLite and RabbitMQ + Redis: what a listing reads from the
bodies, requeueing with attempts reset (and signatures remade), a requeued call reaching the
producer still waiting for it, and what happens to a call that was already settled."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.deadletters import reset_attempt
from ivy.message import Message, decode_message, decode_notification
from ivy.serialization import JSONSerializer, Signer

Q = "q"  # a name the RabbitMQ fixture empties before and after each test


def make(urls: tuple[str, str], **options: Any) -> ivy.Ivy:
    return ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05, **options)


@pytest.fixture
def apps() -> Iterator[list[ivy.Ivy]]:
    """Apps a test makes, closed at its end."""
    made: list[ivy.Ivy] = []
    yield made
    for app in made:
        app.close()


class Attempts(ivy.Middleware):
    """Records the attempt each task run starts at."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def before_task(self, message: Message) -> None:
        self.seen.append(message.attempt)


def test_listing_reads_the_body_and_keeps_the_letters(app: ivy.Ivy) -> None:
    # Given a call of a task that the worker does not register: it is dead-lettered
    app.listen(queue=Q, block=False)
    before = time.time()
    call = app.send_task("t.missing", [1, "two"], {"k": 3}, queue=Q)
    wait_for(lambda: app.dead_letters(Q), timeout=20, message="the dead letter")
    # When the dead letters are listed
    [letter] = app.dead_letters(Q)
    # Then the listing reads the call from the body
    assert letter.id and letter.queue == Q
    assert letter.call_id == call.id and letter.name == "t.missing"
    assert "unknown task 't.missing' on queue 'q'" in letter.reason
    assert before - 1 <= letter.time <= time.time() + 1  # RabbitMQ keeps whole seconds
    assert letter.args == [1, "two"] and letter.kwargs == {"k": 3} and letter.attempt == 0
    assert letter.args_preview() == '1, "two", k=3'
    assert json.loads(json.dumps(letter.to_dict()))["name"] == "t.missing"
    # and listing again finds the same letter under the same id (none was taken away)
    assert [d.id for d in app.dead_letters(Q)] == [letter.id]
    assert app.queue_backend.size(Q) == 0


def test_requeue_resets_attempts_and_signs_again(urls: tuple[str, str],
                                                 apps: list[ivy.Ivy]) -> None:
    # Given signed messages and a task that fails both of its attempts
    attempts = Attempts()
    app = make(urls, signing_key="shared-key", middleware=[attempts])
    apps.append(app)
    broken = True

    @app.register_task(name="t.flaky", queue=Q, retry=True, max_retries=1)
    def flaky(n: int) -> int:
        if broken:
            raise ValueError("still broken")
        return n * 2

    app.listen(queue=Q, block=False)
    call = app.delayed_call(flaky, 21)
    with pytest.raises(ivy.RemoteTaskError, match="still broken"):
        call.result(30)
    wait_for(lambda: app.dead_letters(Q), timeout=20, message="the dead letter")
    [letter] = app.dead_letters(Q)
    assert letter.signed and letter.call_id == call.id and letter.attempt == 1
    assert attempts.seen == [0, 1]
    # When it is requeued
    assert app.requeue_dead(Q) == 1
    # Then it runs with all its attempts again (it still fails), signed well enough for
    # the worker, and is dead again
    wait_for(lambda: attempts.seen == [0, 1, 0, 1] and app.dead_letters(Q), timeout=30,
             message="two more attempts and the dead letter")
    # When the task is fixed and the letter requeued by its call id
    broken = False
    [again] = app.dead_letters(Q)
    assert app.requeue_dead(Q, [call.id]) == 1
    wait_for(lambda: attempts.seen == [0, 1, 0, 1, 0] and app.queue_backend.size(Q) == 0,
             timeout=30, message="the successful run and its ack")
    assert app.dead_letters(Q) == []
    # and the call keeps its first final outcome: the notifier stores the first one only
    stored = app.start_notification_producer().stored(call.id)
    assert stored is not None
    note = decode_notification(stored, app.serializer, signer=app.signer)
    assert note.status == "errored" and note.error is not None
    assert note.error["type"] == "ValueError"
    assert again.id != letter.id


def test_a_requeued_call_reaches_its_waiting_producer(urls: tuple[str, str],
                                                      apps: list[ivy.Ivy]) -> None:
    # Given a producer that signs with a new key, and a worker that knows only the old one:
    # the message is dead-lettered as signed with an unknown key, and since nothing in it
    # can be trusted, the producer is not told and keeps waiting
    producer = make(urls, signing_key="new-key")
    old = make(urls, signing_key="old-key")
    apps.extend([producer, old])

    def add(a: int, b: int) -> int:
        return a + b

    old.register_task(add, name="t.add", queue=Q)
    worker = old.listen(queue=Q, block=False)
    call = producer.send_task("t.add", [2, 3], queue=Q)
    wait_for(lambda: old.dead_letters(Q), timeout=20, message="the dead letter")
    [letter] = old.dead_letters(Q)
    assert "unknown key" in letter.reason and letter.call_id == call.id
    assert old.start_notification_producer().stored(call.id) is None
    assert not call.done()
    worker.stop(10)
    # When a worker with the new key list takes over and the dead letter is requeued
    new = make(urls, signing_key=["new-key", "old-key"])
    apps.append(new)
    new.register_task(add, name="t.add", queue=Q)
    new.listen(queue=Q, block=False)
    assert new.requeue_dead(Q, [letter.id]) == 1
    # Then the call runs and the producer, still waiting, gets its result
    assert call.result(30) == 5
    assert new.dead_letters(Q) == []


def test_rejected_call_requeued_runs_but_keeps_its_rejection(app: ivy.Ivy) -> None:
    # Given three calls of a task the worker did not register yet, and a body that is not
    # JSON: all are dead-lettered, and the producers of the calls are told (MessageRejected)
    app.listen(queue=Q, block=False)
    calls = [app.send_task("t.late", [i], queue=Q) for i in range(3)]
    app.queue_backend.publish(Q, b"{not json")
    for call in calls:
        with pytest.raises(ivy.RemoteTaskError) as rejected:
            call.result(20)
        assert rejected.value.type == "MessageRejected"
    wait_for(lambda: len(app.dead_letters(Q)) == 4, timeout=20, message="4 dead letters")
    runs: list[int] = []

    @app.register_task(name="t.late", queue=Q)
    def late(i: int) -> int:
        runs.append(i)
        return i

    # When the second call is requeued by its call id, once the task is registered
    assert app.requeue_dead(Q, [calls[1].id, "no-such-call"]) == 1
    # Then it runs; its producer already had its final (first) outcome and keeps it
    wait_for(lambda: runs == [1] and app.queue_backend.size(Q) == 0, timeout=20,
             message="the requeued call to run")
    assert calls[1].exception() is not None
    left = app.dead_letters(Q)
    assert sorted(d.call_id or "?" for d in left) == sorted([calls[0].id, calls[2].id, "?"])
    # The body that is not JSON reads as nothing, and would go back byte for byte
    [bad] = [d for d in left if d.call_id is None]
    assert bad.name is None and bad.args is None and bad.args_preview() == "{not json"
    # When the rest are purged
    assert app.purge_dead(Q) == 3
    assert app.dead_letters(Q) == [] and app.purge_dead(Q) == 0


# -- reset_attempt: which bodies are rewritten ---------------------------------------------

JSON = JSONSerializer()


def body(attempt: int, **extra: Any) -> bytes:
    return Message(id="c1", name="t.f", args=[1], queue=Q, attempt=attempt, priority=4,
                   extra=extra).encode(JSON)


def test_final_failures_can_be_kept_out_of_the_dead_letters(urls: tuple[str, str],
                                                            apps: list[ivy.Ivy]) -> None:
    # Given a worker that does not dead-letter failures, and a task that always fails
    app = make(urls, dead_letter_failures=False)
    apps.append(app)

    @app.register_task(name="t.fails", queue=Q, retry=True, max_retries=2)
    def fails() -> None:
        raise ValueError("always")

    @app.register_task(name="t.ok", queue=Q)
    def ok() -> int:
        return 1

    app.listen(queue=Q, block=False)
    # When it fails all 3 of its runs
    with pytest.raises(ivy.RemoteTaskError, match="always"):
        app.delayed_call(fails).result(30)
    # Then its producer has the error, the message is gone, and the dead letters stay empty
    # (a call after it has run: the failure was settled before it)
    assert app.delayed_call(ok).result(30) == 1
    wait_for(lambda: app.queue_backend.size(Q) == 0, timeout=10, message="an empty queue")
    assert app.dead_letters(Q) == []
    # while a message that cannot run is still dead-lettered
    app.send_task("t.missing", [], queue=Q)
    wait_for(lambda: len(app.dead_letters(Q)) == 1, timeout=20, message="the dead letter")


def test_dead_letter_ttl_is_an_option_of_every_backend(sqlite_url: str, amqp_url: str,
                                                       redis_url: str) -> None:
    from ivy.config import make_queue_backend
    from ivy.queues.base import DEFAULT_DEAD_LETTER_TTL

    def joined(url: str, option: str) -> str:
        return f"{url}{'&' if '?' in url else '?'}{option}"

    for url in (sqlite_url, amqp_url, redis_url, "memory://ttl"):
        backend = make_queue_backend(url)
        assert backend.dead_letter_ttl == DEFAULT_DEAD_LETTER_TTL == 14 * 86_400
        backend.close()
        backend = make_queue_backend(joined(url, "dead_letter_ttl=3600"))
        assert backend.dead_letter_ttl == 3600
        backend.close()
        backend = make_queue_backend(joined(url, "dead_letter_ttl=none"))
        assert backend.dead_letter_ttl is None
        backend.close()
        for bad in ("0", "-5", "soon", "inf"):
            with pytest.raises(ivy.ConfigurationError,
                               match=f"dead_letter_ttl={bad!r}.*seconds > 0.*=none"):
                make_queue_backend(joined(url, f"dead_letter_ttl={bad}"))


def test_reset_attempt_rewrites_a_v1_message_and_keeps_the_rest() -> None:
    new, priority = reset_attempt(body(3, custom="kept"), JSON, None)
    message = decode_message(new, JSON)
    assert message.attempt == 0 and message.args == [1] and priority == 4
    assert message.extra == {"custom": "kept"}
    assert reset_attempt(body(0), JSON, None) == (body(0), 4)  # nothing to change


def test_reset_attempt_signs_again_only_what_it_verified() -> None:
    key, other = Signer("k1"), Signer("k2")
    signed = key.sign(body(2))
    # a signed body that verifies is signed again, with attempt 0
    new, _ = reset_attempt(signed, JSON, Signer(["k1"]))
    assert decode_message(new, JSON, signer=key).attempt == 0
    # one the app cannot check, or cannot sign again, goes back as it was
    assert reset_attempt(signed, JSON, other)[0] == signed
    assert reset_attempt(signed, JSON, None)[0] == signed
    # and an unsigned one is never signed by the tools (a worker with a key still refuses it)
    new, _ = reset_attempt(body(2), JSON, key)
    assert not new.startswith(b'{"ivy_signed"') and decode_message(new, JSON).attempt == 0


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]",
                                 b'{"name": "t.f", "options": {}, "args": [1]}',
                                 b'{"ivy": 1, "id": "x", "attempt": 2}'])
def test_reset_attempt_leaves_other_bodies_alone(raw: bytes) -> None:
    assert reset_attempt(raw, JSON, None)[0] == raw
