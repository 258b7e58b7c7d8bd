"""ivy: easy, yet flexible task execution through robust queues (a port of the Node.js ivy).
The module-level functions are the methods of one default :class:`Ivy`, :data:`default`
(docs/getting-started.md for a first task, docs/reference/ for the API)."""

from __future__ import annotations

import atexit
import logging

from ivy.app import Ivy
from ivy.call import Call
from ivy.config import mask_url
from ivy.context import CallContext, Progress, current
from ivy.errors import (
    CallCancelled,
    ConfigurationError,
    Discard,
    IvyError,
    MessageError,
    MessageTooLarge,
    PublishError,
    PublishTimeout,
    QueueMismatch,
    RemoteTaskError,
    ResultTimeout,
    Retry,
    SerializationError,
    Snooze,
    TaskCancelled,
    TaskNotRegistered,
    TaskTimeout,
    TransactionRolledBack,
)
from ivy.message import PROTOCOL_VERSION, Message, Notification
from ivy.middleware import Middleware
from ivy.task import Task
from ivy.worker import Worker
from ivy.workflows import Signature, chain, chord, group, signature

__version__ = "0.1.0"

#: The default instance behind the module-level functions.
default = Ivy()
"""The instance behind the module-level functions (``ivy.delayed_call``, ``ivy.listen``, ...)
and ``@ivy.register_task``, and the one ``ivy worker`` runs; configured by ``setup_queue``
and ``start_notification_*``, or by ``IVY_QUEUE_URL`` / ``IVY_NOTIFIER_URL``."""

@atexit.register
def _at_exit() -> None:
    """At interpreter exit, the default instance flushes what it sent (unconfirmed messages
    are logged), then, as a Node.js process stays up while a callback is due, waits for the
    calls whose callbacks have not run yet; each step bounded by ``default.exit_timeout``.
    A Ctrl-C meanwhile skips the rest."""
    try:
        default.producer.flush_quietly(default.exit_timeout)
        default.wait_for_callbacks(default.exit_timeout, at_exit=True)
    except KeyboardInterrupt:
        logging.getLogger("ivy").warning("exit: stopped waiting (Ctrl-C); unconfirmed messages "
                                         "and callbacks not run yet are given up")

register_task = default.register_task
delayed_call = default.delayed_call
delayed_calls = default.delayed_calls
flush = default.flush
send_task = default.send_task
cancel = default.cancel
periodic_task = default.periodic_task
schedule = default.schedule
setup_queue = default.setup_queue
start_notification_consumer = default.start_notification_consumer
start_notification_producer = default.start_notification_producer
listen = default.listen
wait = default.wait
close = default.close
transaction = default.transaction

__all__ = [
    "PROTOCOL_VERSION", "Call", "CallCancelled", "CallContext", "ConfigurationError", "Discard",
    "Ivy", "IvyError", "Message", "MessageError", "MessageTooLarge", "Middleware", "Notification",
    "Progress", "PublishError", "PublishTimeout", "QueueMismatch", "RemoteTaskError",
    "ResultTimeout", "Retry", "SerializationError", "Signature", "Snooze", "Task", "TaskCancelled",
    "TaskNotRegistered", "TaskTimeout", "TransactionRolledBack", "Worker", "cancel", "chain",
    "chord", "close", "current", "default", "delayed_call", "delayed_calls", "flush", "group",
    "listen", "mask_url", "periodic_task", "register_task", "schedule", "send_task", "setup_queue",
    "signature", "start_notification_consumer", "start_notification_producer", "transaction",
    "wait",
]
