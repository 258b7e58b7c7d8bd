"""The JSON Schema (draft-07) of a task's arguments and result, from its annotations, for producers
in other languages (``ivy schema MODULE``)."""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import types
import typing
import uuid
from typing import Any

from ivy.annotations.codec import hints_of
from ivy.annotations.scalars import DECIMAL, DURATION, is_model

DRAFT = "http://json-schema.org/draft-07/schema#"
DATETIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}:\d{2})?$"
DATE = r"^\d{4}-\d{2}-\d{2}$"
TIME = r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}:\d{2})?$"
UUID = (r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
        r"[0-9a-fA-F]{12})$")
BASE64 = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

_FIXED: dict[Any, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
    bool: {"type": "boolean"}, type(None): {"type": "null"},
    dt.datetime: {"type": "string", "pattern": DATETIME,
                  "description": "ISO 8601 date and time; with an offset (or Z), an aware "
                                 "datetime, without one a naive one"},
    dt.date: {"type": "string", "format": "date", "pattern": DATE},
    dt.time: {"type": "string", "pattern": TIME, "description": "ISO 8601 time"},
    dt.timedelta: {"type": ["string", "number"], "pattern": f"^{DURATION.pattern}$",
                   "description": "ISO 8601 duration (days, hours, minutes, seconds: "
                                  "P1DT2H30M, -PT0.5S), or a number of seconds"},
    uuid.UUID: {"type": "string", "pattern": UUID,
                "description": "UUID: 32 hex digits, hyphens allowed"},
    decimal.Decimal: {"type": ["string", "number"], "pattern": f"^{DECIMAL.pattern}$",
                      "description": "decimal number, best as a string (exact)"},
    bytes: {"type": "string", "contentEncoding": "base64", "pattern": BASE64},
}
_LISTS = (list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)
_SETS = (set, frozenset, abc.Set, abc.MutableSet)
_MAPS = (dict, abc.Mapping, abc.MutableMapping)


class Schemas:
    """Builds schemas of annotations; named types (enums, dataclasses, pydantic models) go
    once into ``definitions`` and are referenced from there."""

    def __init__(self, mode: str = "validation") -> None:
        self.definitions: dict[str, Any] = {}
        self._names: dict[Any, str] = {}
        self._mode = mode  # pydantic's: "validation" (arguments) or "serialization"

    def document(self, schema: dict[str, Any], title: str) -> dict[str, Any]:
        """``schema`` as a standalone document (``$schema``, ``title``, ``definitions``)."""
        out = {"$schema": DRAFT, "title": title, **schema}
        if self.definitions:
            out["definitions"] = self.definitions
        return out

    def of(self, tp: Any) -> dict[str, Any]:
        """The schema of an annotation ({} for one that takes anything)."""
        if tp is None:
            tp = type(None)
        fixed = _FIXED.get(tp) if isinstance(tp, type) else None
        if fixed is not None:
            return dict(fixed)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.of(args[0])
        if isinstance(tp, typing.NewType):
            return self.of(tp.__supertype__)
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin in (typing.Union, types.UnionType):
            return {"anyOf": [self.of(a) for a in args]}
        if origin in _LISTS or tp in _LISTS:
            return {"type": "array", "items": self.of(args[0]) if args else {}}
        if origin in _SETS or tp in _SETS:
            return {"type": "array", "items": self.of(args[0]) if args else {},
                    "uniqueItems": True}
        if origin is tuple or tp is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                return {"type": "array", "items": self.of(args[0]) if args else {}}
            items = [] if args == ((),) else [self.of(a) for a in args]
            return {"type": "array", "items": items, "additionalItems": False,
                    "minItems": len(items)}
        if origin in _MAPS or tp in _MAPS:
            if args and args[0] not in (str, Any):
                return {"type": "object"}
            return {"type": "object", "additionalProperties": self.of(args[1]) if args else {}}
        if isinstance(tp, type) and (issubclass(tp, enum.Enum) or is_model(tp)
                                     or dataclasses.is_dataclass(tp)):
            return {"$ref": f"#/definitions/{self._define(tp)}"}
        return {}

    def _define(self, cls: type) -> str:
        name = self._names.get(cls)
        if name is not None:
            return name
        name = cls.__name__
        if name in self.definitions:  # another class of the same name
            name = f"{cls.__module__}.{cls.__qualname__}"
        self._names[cls] = name
        self.definitions[name] = {}  # a dataclass that holds itself refers to it meanwhile
        self.definitions[name] = self._named(cls)
        return name

    def _named(self, cls: type) -> dict[str, Any]:
        if issubclass(cls, enum.Enum):
            return {"title": cls.__name__, "enum": [m.value for m in cls]}
        if is_model(cls):
            schema: dict[str, Any] = cls.model_json_schema(  # type: ignore[attr-defined]
                ref_template="#/definitions/{model}", mode=self._mode)
            for key, value in schema.pop("$defs", {}).items():
                self.definitions.setdefault(key, value)
            return schema
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        return {"title": cls.__name__, "type": "object",
                "properties": {f.name: self.of(hints.get(f.name, Any)) for f in fields},
                "required": [f.name for f in fields if f.default is dataclasses.MISSING
                             and f.default_factory is dataclasses.MISSING],
                "additionalProperties": False}


def task_schemas(task: Any) -> dict[str, Any]:
    """``{"queue", "arguments", "result"}`` of a :class:`ivy.Task`: the schemas of its
    message's ``args`` and ``kwargs`` (an object with those two fields: a whole message
    validates too) and of its result."""
    hints = (hints_of(task.func, task.name) or {}) if task.signature is not None else {}
    params = list(task.signature.parameters.values()) if task.signature is not None else []
    if task.style == "callback":
        positional = [i for i, p in enumerate(params) if p.kind in (
            p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if positional:
            params.pop(positional[-1])
    schemas = Schemas("validation")
    items: list[Any] = []
    more: Any = False
    properties: dict[str, Any] = {}
    extra: Any = False
    required: list[str] = []
    least = 0
    for p in params:
        schema = schemas.of(hints[p.name]) if p.name in hints else {}
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            items.append(schema)
            if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
                least = len(items)
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            properties[p.name] = schema
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                required.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            more = schema
        elif p.kind is p.VAR_KEYWORD:
            extra = schema
    if task.signature is None:
        more = extra = {}
    args: dict[str, Any] = {"type": "array", "items": items, "additionalItems": more}
    if least:
        args["minItems"] = least
    kwargs: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": extra}
    if required:
        kwargs["required"] = required
    arguments = schemas.document(
        {"type": "object", "properties": {"args": args, "kwargs": kwargs},
         "required": ["args", "kwargs"] if required else ["args"]},
        f"arguments of {task.name}")
    results = Schemas("serialization")
    returns = hints.get("return", inspect.Signature.empty)
    result = {} if returns is inspect.Signature.empty or task.style == "callback" else (
        results.of(returns))
    return {"queue": task.queue, "arguments": arguments,
            "result": results.document(result, f"result of {task.name}")}


def registry_schemas(registry: Any) -> dict[str, Any]:
    """Every task of a registry: ``{"tasks": {name: task_schemas(task)}}``."""
    return {"tasks": {name: task_schemas(registry.get(name)) for name in registry.names()}}
