"""A small fake of the IronMQ v3 HTTP API, for tests (no open-source IronMQ server exists).

Standard library only, 127.0.0.1 only, an OAuth token check, and reservations that expire on
time, sub-second ones included. It covers what ivy and the iron-mq client use: queue info and
create/delete, post, reserve (with long-poll ``wait``), delete with a reservation id (one, or
several by id), clear, touch, release with a delay, and peek.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class _Message:
    id: str
    body: str
    available_at: float
    seq: int
    reservation_id: str | None = None
    reserved_count: int = 0


class FakeIronMQ:
    """Run with ``start()``; ``host``, ``port``, ``token`` and ``project_id`` configure clients."""

    def __init__(self, token: str = "fake-token", project_id: str = "testpackage") -> None:
        self.token = token
        self.project_id = project_id
        self.queues: dict[str, dict[str, _Message]] = {}
        self.cond = threading.Condition()
        self._seq = itertools.count()
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536  # headers and body in one write (no delayed-ACK stalls)
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                fake.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Authorization") != f"OAuth {fake.token}":
                    self._reply(401, {"msg": "Invalid token"})
                    return
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError:
                    self._reply(400, {"msg": "Invalid JSON"})
                    return
                status, payload = fake.route(method, self.path, body)
                self._reply(status, payload)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host, self.port = "127.0.0.1", int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeIronMQ:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ---------------------------------------------------------------------------

    _ROUTE = re.compile(r"^/3/projects/([^/]+)/queues(?:/([^/?]+))?(/messages(?:/([^/?]+))?"
                        r"(/touch|/release)?|/reservations)?(?:\?(.*))?$")

    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        m = self._ROUTE.match(path)
        if m is None:
            return 404, {"msg": "Not found"}
        project, name, sub, message_id, action, query = m.groups()
        if project != self.project_id:
            return 404, {"msg": "Project not found"}
        if name is None:
            return 200, {"queues": [{"name": n} for n in sorted(self.queues)]}
        with self.cond:
            self._expire(time.time())
            if sub is None:
                return self._queue(method, name)
            if sub == "/reservations" and method == "POST":
                return self._reserve(name, body)
            if message_id is None and method == "POST":
                return self._post(name, body)
            if message_id is None and method == "GET":
                n = int(dict(p.split("=") for p in (query or "n=1").split("&")).get("n", 1))
                return 200, {"messages": [
                    {"id": msg.id, "body": msg.body, "reserved_count": msg.reserved_count}
                    for msg in sorted(self.queues.get(name, {}).values(),
                                      key=lambda x: x.seq)[:n]]}
            if message_id is None and method == "DELETE" and body.get("ids"):
                return self._delete_many(name, body["ids"])
            if message_id is None and method == "DELETE":
                self.queues.get(name, {}).clear()
                return 200, {"msg": "Cleared"}
            return self._message(method, name, message_id, action, body)

    def _queue(self, method: str, name: str) -> tuple[int, dict[str, Any]]:
        if method in ("PUT", "PATCH"):
            self.queues.setdefault(name, {})
        elif method == "DELETE":
            if self.queues.pop(name, None) is None:
                return 404, {"msg": "Queue not found"}
            return 200, {"msg": "Deleted"}
        elif name not in self.queues:
            return 404, {"msg": "Queue not found"}
        messages = self.queues[name]
        return 200, {"queue": {"name": name, "project_id": self.project_id,
                               "size": len(messages), "total_messages": len(messages)}}

    def _post(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, {"msg": "Invalid messages"}
        queue = self.queues.setdefault(name, {})
        ids = []
        now = time.time()
        for item in messages:
            if not isinstance(item, dict) or not isinstance(item.get("body"), str):
                return 400, {"msg": "Message body must be a string"}
            message_id = uuid.uuid4().hex
            queue[message_id] = _Message(message_id, item["body"],
                                         now + float(item.get("delay") or 0), next(self._seq))
            ids.append(message_id)
        self.cond.notify_all()
        return 200, {"ids": ids, "msg": "Messages put on queue."}

    def _delete_many(self, name: str, items: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        """Delete messages by id (reserved ones only with their reservation id)."""
        queue = self.queues.get(name, {})
        for item in items:
            msg = queue.get(str(item.get("id")))
            if msg is not None and msg.reservation_id in (None, item.get("reservation_id")):
                del queue[msg.id]
        return 200, {"msg": "Deleted"}

    def _expire(self, now: float) -> None:
        for queue in self.queues.values():
            for msg in queue.values():
                if msg.reservation_id is not None and msg.available_at <= now:
                    msg.reservation_id = None  # the reservation ran out

    def _reserve(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        n = int(body.get("n") or 1)
        timeout = float(body.get("timeout") or 60)
        deadline = time.time() + min(float(body.get("wait") or 0), 30)
        while True:
            now = time.time()
            self._expire(now)
            ready = sorted((msg for msg in self.queues.setdefault(name, {}).values()
                            if msg.reservation_id is None and msg.available_at <= now),
                           key=lambda x: x.seq)[:n]
            if ready or now >= deadline:
                break
            due = [msg.available_at for msg in self.queues[name].values()
                   if msg.available_at > now]
            self.cond.wait(min([deadline - now, *(d - now for d in due)]))
        out = []
        for msg in ready:
            msg.reservation_id = uuid.uuid4().hex
            msg.reserved_count += 1
            msg.available_at = now + timeout
            out.append({"id": msg.id, "body": msg.body, "reserved_count": msg.reserved_count,
                        "reservation_id": msg.reservation_id})
        return 200, {"messages": out}

    def _message(self, method: str, name: str, message_id: str, action: str | None,
                 body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        queue = self.queues.get(name, {})
        msg = queue.get(message_id)
        reservation = body.get("reservation_id")
        if msg is None:
            return 404, {"msg": "Message not found"}
        if method == "GET" and action is None:
            return 200, {"message": {"id": msg.id, "body": msg.body,
                                     "reserved_count": msg.reserved_count}}
        if msg.reservation_id is None or reservation != msg.reservation_id:
            return 403, {"msg": "Reservation has timed out or does not match"}
        now = time.time()
        if method == "DELETE" and action is None:
            del queue[message_id]
            return 200, {"msg": "Deleted"}
        if method == "POST" and action == "/touch":
            msg.reservation_id = uuid.uuid4().hex
            msg.available_at = now + float(body.get("timeout") or 60)
            return 200, {"reservation_id": msg.reservation_id, "msg": "Touched"}
        if method == "POST" and action == "/release":
            msg.reservation_id = None
            msg.available_at = now + float(body.get("delay") or 0)
            self.cond.notify_all()
            return 200, {"msg": "Released"}
        return 405, {"msg": "Method not allowed"}


if __name__ == "__main__":  # run on its own (the cloud benchmark starts it this way)
    import sys

    server = FakeIronMQ(token=sys.argv[1] if len(sys.argv) > 1 else "fake-token",
                        project_id=sys.argv[2] if len(sys.argv) > 2 else "testpackage")
    print(server.port, flush=True)
    server.server.serve_forever()
