"""Arguments and results converted by their annotations (PROTOCOL.md, "Typed arguments and
results"; docs/guides/typing.md): a parameter annotated ``datetime``, ``UUID``, ``Decimal``,
a dataclass... receives that type in the worker, and travels as plain JSON.

* :mod:`ivy.annotations.convert`: one converter per annotation (compiled once, cached);
* :mod:`ivy.annotations.codec`: one codec per task (``Task.codec``), None when nothing
  converts, so that such tasks cost nothing;
* :mod:`ivy.annotations.schema`: the JSON Schema of a task's arguments and result
  (``ivy schema``).
"""

from __future__ import annotations

from ivy.annotations.codec import Arguments, BadArguments, TaskCodec, compile_task
from ivy.annotations.convert import compile_type
from ivy.annotations.scalars import Converter, Mismatch, plain

__all__ = ["Arguments", "BadArguments", "Converter", "Mismatch", "TaskCodec", "compile_task",
           "compile_type", "plain"]
