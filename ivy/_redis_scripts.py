"""Running a Lua script on Redis by its sha for a batch of calls in one pipeline, loading it
again where the server does not know it (a new or flushed server)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

#: pipelines per batch while the server answers that it does not know the script (it may be
#: flushed again between the load and the call)
SCRIPT_TRIES = 3

Pipeline = Callable[[list[tuple[Any, ...]]], list[Any]]


def evalsha_many(pipeline: Pipeline, load: Callable[[], object], sha: str,
                 calls: Sequence[Sequence[Any]], tries: int = SCRIPT_TRIES) -> list[Any]:
    """``EVALSHA sha *args`` for each of ``calls``, run by ``pipeline`` (commands in, replies
    or exceptions out, in order). The calls refused with ``NOSCRIPT`` run again, alone, after
    ``load()``, up to ``tries`` pipelines in all; their last replies stand."""
    replies = pipeline([("EVALSHA", sha, *args) for args in calls])
    for _ in range(tries - 1):
        again = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
        if not again:
            break
        load()
        for i, reply in zip(again, pipeline([("EVALSHA", sha, *calls[i]) for i in again]),
                            strict=True):
            replies[i] = reply
    return replies
