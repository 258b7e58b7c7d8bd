"""``ironmq://``: IronMQ v3 as a queue backend, through the iron-mq client
(``pip install 'ivy-queue[ironmq]'``). How it works: docs/internals/cloud.md."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import iron_core
import iron_mq
import requests

from ivy.errors import ConfigurationError
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

log = logging.getLogger("ivy.ironmq")
LONG_POLL = 30  # IronMQ's longest wait
BASE64_PREFIX = "ivy-base64:"
CONNECT_TIMEOUT = 5.0
MAX_DELAY = 604_800  # IronMQ's longest message delay: 7 days


class _BoundedIronClient(iron_core.IronClient):  # type: ignore[misc]
    """iron_core's client with timeouts, per-thread connection reuse and lenient parsing."""

    #: seconds a request may take beyond the long-poll wait it asks for
    request_timeout: float = 15.0
    _local: threading.local
    _sessions: list[requests.Session]
    _sessions_lock: threading.Lock

    def adopt(self, request_timeout: float) -> None:
        """Set up the state this class adds, on a client object whose class was swapped."""
        self._local = threading.local()
        self._sessions = []
        self._sessions_lock = threading.Lock()
        self.request_timeout = request_timeout

    def close_sessions(self) -> None:
        """Close every thread's session and its pooled connections."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
            self._local = threading.local()  # a thread using it again gets a new session
        for session in sessions:
            session.close()

    def request(self, url: str, method: str, body: str = "", headers: dict[str, str] | None = None,
                retry: bool = True) -> dict[str, Any]:
        local = self._local
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            with self._sessions_lock:
                self._sessions.append(session)
        all_headers = {**self.headers, **(headers or {})}
        all_headers["Authorization"] = f"OAuth {self.token_provider.getToken()}"
        wait = 0.0
        if body and '"wait"' in body:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                wait = float(json.loads(body).get("wait") or 0)
        delay = 0.5
        for attempt in range(4):
            response = session.request(method, self.base_url + url, data=body or None,
                                       headers=all_headers,
                                       timeout=(CONNECT_TIMEOUT, wait + self.request_timeout))
            if response.status_code not in (503, 504) or not retry or attempt == 3:
                break
            time.sleep(delay)
            delay *= 2
        response.raise_for_status()
        content_type = (response.headers.get("Content-Type") or "text/plain").split(";")[0]
        result: dict[str, Any] = {"status": response.status_code, "resp": response,
                                  "content-type": content_type, "body": response.text}
        if content_type.lower() == "application/json":
            with contextlib.suppress(ValueError):
                result["body"] = response.json()
        return result


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return BASE64_PREFIX + base64.b64encode(body).decode()


def _bytes(text: str) -> bytes:
    if text.startswith(BASE64_PREFIX):
        return base64.b64decode(text[len(BASE64_PREFIX):])
    return text.encode("utf-8")


class IronMQQueueBackend(CloudQueueBackend):
    supports_priority = False
    poll_seconds = 20.0

    def __init__(self, *, token: str | None = None, project_id: str | None = None,
                 host: str | None = None, port: int | None = None,
                 protocol: str | None = None, min_reserve: float = 30.0,
                 request_timeout: float = 15.0,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL) -> None:
        try:
            self.mq = iron_mq.IronMQ(token=token, project_id=project_id, host=host, port=port,
                                     protocol=protocol)
        except ValueError as exc:
            raise ConfigurationError(
                f"IronMQ is not configured: {exc}. Give auth.token and auth.project_id, or "
                "set IRON_TOKEN and IRON_PROJECT_ID, or write an iron.json") from None
        client = self.mq.client
        client.__class__ = _BoundedIronClient
        client.adopt(request_timeout)
        self._client: _BoundedIronClient = client
        self.url = f"ironmq://{client.host}:{client.port}/{client.project_id}"
        self.min_reserve = min_reserve
        self.dead_letter_ttl = dead_letter_ttl_option(dead_letter_ttl,
                                                      f"the IronMQ queue backend {self.url}")
        self._sender = BatchSender(self._write, max_batch=100, name="ivy-ironmq-send")
        self._queues: dict[str, iron_mq.Queue] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        auth = dict(config.get("auth") or {})
        url = config.get("url")
        host, port = config.get("host"), config.get("port")
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.username:
                auth.setdefault("project_id", unquote(parts.username))
            if parts.password:
                auth.setdefault("token", unquote(parts.password))
            host = host or parts.hostname
            port = port or parts.port
        return cls(token=auth.get("token"), project_id=auth.get("project_id"), host=host,
                   port=int(port) if port else None, protocol=config.get("protocol"),
                   min_reserve=float(config.get("min_reserve", 30.0)),
                   request_timeout=float(config.get("request_timeout", 15.0)),
                   dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL))

    def queue(self, name: str) -> iron_mq.Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = iron_mq.Queue(self.mq, name)
        return q

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        self.publish_many(queue, [body], delay=delay)

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        messages = [{"body": _text(b), **({"delay": math.ceil(delay)} if delay > 0 else {})}
                    for b in bodies]
        for start in range(0, len(messages), 100):
            self.queue(queue).post(*messages[start:start + 100])

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Asynchronous sends through a background thread that joins what producers hand it
        meanwhile into posts of up to 100 messages."""
        return self._sender.send(queue, bodies, priority=priority, delay=delay, route=route)

    def _write(self, batch: list[Outgoing]) -> list[BaseException | None]:
        errors: list[BaseException | None] = [None] * len(batch)
        for queue, indexes in by_queue(batch).items():
            try:
                self.queue(queue).post(*[
                    {"body": _text(batch[i].body),
                     **({"delay": math.ceil(batch[i].delay)} if batch[i].delay > 0 else {})}
                    for i in indexes])
            except Exception as exc:
                for i in indexes:
                    errors[i] = exc
        return errors

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return IronMQConsumer(self, queue, prefetch, max(reserve_time, self.min_reserve))

    def size(self, queue: str) -> int:
        try:
            return int(self.queue(queue).size())
        except requests.HTTPError as exc:
            if _missing(exc):
                return 0
            raise

    def _peek_dead(self, queue: str, limit: int) -> list[DeadLetter]:
        """IronMQ peeks at 100 messages at most."""
        try:
            peeked = self.queue(f"{queue}.dead").peek(max=min(limit, 100))
        except requests.HTTPError as exc:
            if _missing(exc):
                return []
            raise
        found = []
        for m in peeked.get("messages") or []:
            text, reason, when = _unwrap_dead(m["body"])
            found.append(DeadLetter(queue, _bytes(text), reason, when, str(m["id"])))
        return found

    def _take_dead(self, queue: str) -> list[dict[str, Any]]:
        try:
            result = self.queue(f"{queue}.dead").reserve(
                max=100, timeout=max(DEAD_HOLD, self.min_reserve), wait=0)
        except requests.HTTPError as exc:
            if _missing(exc):
                return []
            raise
        messages: list[dict[str, Any]] = result.get("messages") or []
        return messages

    def _dead_id(self, message: dict[str, Any]) -> str:
        return str(message["id"])

    def _dead_body(self, message: dict[str, Any]) -> bytes:
        return _bytes(_unwrap_dead(message["body"])[0])

    def _send_again(self, queue: str, body: bytes) -> None:
        self.queue(queue).post({"body": _text(body)})

    def _delete_dead(self, queue: str, message: dict[str, Any]) -> None:
        self.queue(f"{queue}.dead").delete(message["id"],
                                           reservation_id=message["reservation_id"])

    def _delete_dead_batch(self, queue: str, batch: list[dict[str, Any]]) -> int:
        self.queue(f"{queue}.dead").delete_multiple(messages={"messages": batch})
        return len(batch)

    def _let_go(self, queue: str, held: list[dict[str, Any]]) -> None:
        dead = self.queue(f"{queue}.dead")
        for m in held:
            with contextlib.suppress(requests.HTTPError):
                dead.release(m["id"], m["reservation_id"])

    def close(self) -> None:
        """Send what is queued, then close the HTTP sessions (one per thread that made a
        request) and their connections."""
        self._sender.close()
        self._client.close_sessions()


def _missing(exc: requests.HTTPError) -> bool:
    """Whether IronMQ answered 404: the queue does not exist (yet)."""
    return exc.response is not None and exc.response.status_code == 404


def _unwrap_dead(text: str) -> tuple[str, str, float]:
    """(original body text, reason, time) of a ``Q.dead`` message; a message that is not
    ivy's envelope is its own body, with no reason."""
    try:
        envelope = json.loads(text)
        return str(envelope["body"]), str(envelope.get("reason", "")), float(
            envelope.get("time", 0))
    except (ValueError, KeyError, TypeError):
        return text, "", 0.0


class IronMQDelivery(Delivery):
    def __init__(self, backend: IronMQQueueBackend, queue: str, message: dict[str, Any],
                 ) -> None:
        super().__init__()
        self._backend = backend
        self.queue = queue
        self._id: str = message["id"]
        self._reservation: str = message["reservation_id"]
        self.body = _bytes(message["body"])
        self._text: str = message["body"]
        self.delivery_count = int(message.get("reserved_count") or 1)

    def _q(self) -> iron_mq.Queue:
        return self._backend.queue(self.queue)

    @contextlib.contextmanager
    def _reserved(self, what: str) -> Iterator[None]:
        """A reservation that ran out is answered with 403/404: the message is (or will be)
        delivered again, so there is nothing left to do with this copy."""
        try:
            yield
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code not in (403, 404):
                raise
            log.warning("ironmq: could not %s message %s of %s: its reservation ran out",
                        what, self._id, self.queue)

    def _ack(self) -> None:
        with self._reserved("delete"):
            self._q().delete(self._id, reservation_id=self._reservation)

    def _retry(self, delay: float, body: bytes | None) -> None:
        """Release the message to come back after ``delay`` (the body cannot change)."""
        with self._reserved("release"):
            self._q().release(self._id, self._reservation, delay=math.ceil(delay))

    def _release(self) -> None:
        with self._reserved("release"):
            self._q().release(self._id, self._reservation)

    def _defer(self, delay: float) -> None:
        """A fresh copy due in ``delay`` s, then the reserved one deleted: a defer must not
        count as an attempt, and IronMQ cannot take back a ``reserved_count``."""
        self._q().post({"body": self._text, "delay": min(MAX_DELAY, max(0, math.ceil(delay)))})
        self._ack()

    def _extend(self, seconds: float) -> None:
        with self._reserved("touch"):
            result = self._q().touch(self._id, self._reservation,
                                     timeout=max(seconds, self._backend.min_reserve))
            if isinstance(result, dict) and result.get("reservation_id"):
                self._reservation = result["reservation_id"]

    def _dead_letter(self, reason: str) -> None:
        envelope = json.dumps({"reason": reason, "queue": self.queue, "time": time.time(),
                               "body": self._text})
        self._backend.queue(f"{self.queue}.dead").post({"body": envelope})
        self._ack()


class IronMQConsumer(LongPollConsumer):
    long_poll = LONG_POLL

    def __init__(self, backend: IronMQQueueBackend, queue: str, prefetch: int,
                 reserve_time: float) -> None:
        super().__init__(queue)
        self._backend = backend
        self._prefetch = min(100, max(1, prefetch))
        self._reserve = reserve_time

    def _receive(self, wait: int) -> list[Delivery]:
        result = self._backend.queue(self.queue).reserve(max=self._prefetch,
                                                        timeout=self._reserve, wait=wait)
        return [IronMQDelivery(self._backend, self.queue, m)
                for m in (result.get("messages") or [])]
