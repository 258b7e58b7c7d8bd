"""The Lua scripts of the Redis Streams queue, read from ``ivy/queues/lua/*.lua``: each
script is its file after the helpers it needs (``now.lua``, ``common.lua``)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

#: script -> the helper files put before it
HELPERS: dict[str, tuple[str, ...]] = {
    "fetch": ("now", "common"),
    "lease": ("now",),
    "settle": ("now", "common"),
    "ack": ("common",),
    "extend": ("now", "common"),
    "publish_level": ("common",),
    "publish_delayed": ("now",),
    "requeue": ("common",),
    "purge": (),
    "forget": ("common",),
    "size": ("common",),
}


def _read(name: str) -> str:
    return files("ivy.queues").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """The text of script ``name``, its helpers first."""
    return "".join(_read(part) for part in (*HELPERS[name], name))
