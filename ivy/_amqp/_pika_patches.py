"""The only code of ivy that uses pika's private API: two speed-ups of a ``SelectConnection``,
applied only to the pika versions they were tested with (docs/internals/amqp.md)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop

log = logging.getLogger("ivy.amqp")

#: the pika versions these patches were tested with: TESTED_FROM <= version < TESTED_BELOW
TESTED_FROM = (1, 3)
TESTED_BELOW = (1, 5)


def _version(text: str) -> tuple[int, ...]:
    """``"1.4.4"`` -> ``(1, 4, 4)``; a suffix such as ``rc1`` or ``.dev0`` is left out."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


#: the installed pika's version, read once (tests replace it to check the fallback)
PIKA_VERSION = _version(getattr(pika, "__version__", "0"))
_fallback_logged = threading.Event()


def enabled() -> bool:
    """Whether the installed pika is one the patches were tested with; logs once if not."""
    if TESTED_FROM <= PIKA_VERSION < TESTED_BELOW:
        return True
    if not _fallback_logged.is_set():
        _fallback_logged.set()
        log.info("amqp: pika %s is outside the versions ivy's I/O shortcuts were tested with "
                 "(%s to below %s); using pika's own I/O paths (correct, somewhat slower)",
                 ".".join(map(str, PIKA_VERSION)), ".".join(map(str, TESTED_FROM)),
                 ".".join(map(str, TESTED_BELOW)))
    return False


class _UnlockedPoll:
    """The I/O loop's poller object, releasing a lock while it waits."""

    def __init__(self, poller: Any, lock: threading.Lock) -> None:
        self._poller = poller
        self._lock = lock

    def poll(self, *args: Any) -> Any:
        self._lock.release()
        try:
            return self._poller.poll(*args)
        finally:
            self._lock.acquire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


def unlock_while_polling(ioloop: IOLoop, lock: threading.Lock) -> bool:
    """Make ``ioloop`` hold ``lock`` except inside its poll system call. pika is not
    thread-safe, so the connection is only ever used by the thread holding the lock: its own
    I/O thread while it runs callbacks, or a thread that found the loop idle. False (nothing
    changed: the loop holds the lock throughout) with an untested pika."""
    if not enabled():
        return False
    poller = getattr(ioloop, "_poller", None)
    create = getattr(poller, "_create_poller", None)
    if poller is None or create is None:  # pragma: no cover - another pika layout
        return False
    poller._create_poller = lambda: _UnlockedPoll(create(), lock)
    return True


def send_eagerly(conn: Any) -> None:
    """Make a connection's frames leave at once. pika buffers every frame and sends it from the
    next turn of the I/O loop, one ``send`` per frame after switching write-readiness
    polling on and off (two ``epoll_ctl`` calls); a publish is three frames. Here the transport
    tries ``send`` first and leaves pika's buffering to what the socket did not take, and
    :func:`corked` joins the frames of a batch of operations into one write."""
    if not enabled():
        return
    transport = getattr(conn, "_transport", None)
    sock = getattr(transport, "_sock", None)
    buffered = getattr(transport, "write", None)
    if transport is None or sock is None or buffered is None or hasattr(sock, "do_handshake"):
        return  # not pika's plain TCP transport (TLS keeps pika's own path)
    active = transport._STATE_ACTIVE

    def write(data: bytes) -> None:
        if transport._tx_buffers or transport._state != active:
            buffered(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # pika's own path meets the error again and closes the connection
            buffered(data)
            return
        if sent < len(data):
            buffered(data[sent:])

    transport.write = write
    emit = conn._adapter_emit_data
    cork: list[bytes] | None = None

    def emit_corked(data: bytes) -> None:
        if cork is not None:
            cork.append(data)
        else:
            emit(data)

    def flush() -> None:
        nonlocal cork
        frames, cork = cork, None
        if frames:
            emit(b"".join(frames))

    def start() -> None:
        nonlocal cork
        if cork is None:
            cork = []

    conn._adapter_emit_data = emit_corked
    conn._ivy_cork = (start, flush)


@contextmanager
def corked(conn: Any) -> Iterator[None]:
    """Join the frames sent inside the block into one write (see :func:`send_eagerly`); a
    plain block where the connection was not patched."""
    cork = getattr(conn, "_ivy_cork", None)
    if cork is None:
        yield
        return
    start, flush = cork
    start()
    try:
        yield
    finally:
        flush()
