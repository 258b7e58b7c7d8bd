"""Arguments and results converted by their annotations: a parameter annotated ``datetime``,
``UUID``, ``Decimal``, a dataclass... receives that type in the worker, and travels as plain
JSON."""

from __future__ import annotations

from ivy.annotations.codec import Arguments, BadArguments, TaskCodec, compile_task
from ivy.annotations.convert import compile_type
from ivy.annotations.scalars import Converter, Mismatch, plain

__all__ = ["Arguments", "BadArguments", "Converter", "Mismatch", "TaskCodec", "compile_task",
           "compile_type", "plain"]
