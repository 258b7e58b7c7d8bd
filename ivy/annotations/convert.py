"""One converter per annotation: how a value of that type travels as plain JSON (PROTOCOL.md,
"Typed arguments and results"), compiled once per type and cached."""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import enum
import re
import threading
import types
import typing
from collections.abc import Callable
from typing import Any

from ivy.annotations.scalars import (
    ANY,
    PLAIN,
    SCALARS,
    Converter,
    Fn,
    Mismatch,
    checked,
    enum_converter,
    identity,
    is_model,
    model_converter,
)


def _dataclass(cls: type, compile_field: Callable[[Any], Converter]) -> Converter:
    name = cls.__name__
    hints = typing.get_type_hints(cls)
    fields = [(f.name, compile_field(hints.get(f.name, Any)),
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
              for f in dataclasses.fields(cls) if f.init]
    known = {f for f, _, _ in fields}

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise Mismatch(value, name, "expected an object")
        unknown = value.keys() - known
        if unknown:
            raise Mismatch(value, name, f"unknown field {sorted(unknown)[0]!r}")
        given = {}
        for field, conv, required in fields:
            if field in value:
                try:
                    given[field] = conv.decode(value[field])
                except Mismatch as exc:
                    raise exc.inside(f".{field}") from None
            elif required:
                raise Mismatch(value, name, f"field {field!r} is missing")
        try:
            return cls(**given)
        except (TypeError, ValueError) as exc:  # its __post_init__ refused the values
            raise Mismatch(value, name, str(exc)) from None

    def encode(value: Any) -> Any:
        if not isinstance(value, cls):
            value = decode(value)
        out = {}
        for field, conv, _ in fields:
            try:
                out[field] = conv.encode(getattr(value, field))
            except Mismatch as exc:
                raise exc.inside(f".{field}") from None
        return out

    return Converter(name, encode, decode, True)


def _each(conv: Converter, name: str, kinds: tuple[type, ...], make: Fn) -> Converter:
    """list, set, frozenset, tuple[X, ...]: a JSON array of X; decoded into ``make``."""
    item_encode, item_decode = conv.encode, conv.decode

    def decode(value: Any) -> Any:
        if type(value) is not list:
            raise Mismatch(value, name, "expected an array")
        out: list[Any] = []
        try:
            for item in value:
                out.append(item_decode(item))
        except Mismatch as exc:
            raise exc.inside(f"[{len(out)}]") from None
        return make(out)

    def encode(value: Any) -> Any:
        if not isinstance(value, kinds):
            raise Mismatch(value, name)
        out: list[Any] = []
        items: Any = value
        try:
            for item in items:
                out.append(item_encode(item))
        except Mismatch as exc:
            raise exc.inside(f"[{len(out)}]") from None
        return out

    return Converter(name, encode, decode, conv.converts)


def _fixed_tuple(convs: list[Converter], name: str) -> Converter:
    def walk(value: Any, what: str, make: Fn) -> Any:
        if len(value) != len(convs):
            raise Mismatch(value, name, f"expected {len(convs)} items")
        out: list[Any] = []
        try:
            for conv, item in zip(convs, value, strict=True):
                out.append(getattr(conv, what)(item))
        except Mismatch as exc:
            raise exc.inside(f"[{len(out)}]") from None
        return make(out)

    def decode(value: Any) -> Any:
        if type(value) is not list:
            raise Mismatch(value, name, "expected an array")
        return walk(value, "decode", tuple)

    def encode(value: Any) -> Any:
        if not isinstance(value, (tuple, list)):
            raise Mismatch(value, name)
        return walk(value, "encode", list)

    return Converter(name, encode, decode, any(c.converts for c in convs))


def _mapping(conv: Converter, name: str) -> Converter:
    item_encode, item_decode = conv.encode, conv.decode

    def walk(value: Any, fn: Fn) -> Any:
        key = ""
        try:
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise Mismatch(key, "str", "object keys are strings")
                out[key] = fn(item)
        except Mismatch as exc:
            raise exc.inside(f"[{key!r}]") from None
        return out

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise Mismatch(value, name, "expected an object")
        return walk(value, item_decode)

    def encode(value: Any) -> Any:
        if not isinstance(value, abc.Mapping):
            raise Mismatch(value, name)
        return walk(value, item_encode)

    return Converter(name, encode, decode, conv.converts)


def _union(convs: list[Converter], name: str) -> Converter:
    """The first member that takes the value wins (in the order written)."""
    if len(convs) == 2 and convs[1] is PLAIN[type(None)]:  # X | None: the common case
        inner = convs[0]
        item_encode, item_decode = inner.encode, inner.decode

        def optional(fn: Fn) -> Fn:
            return lambda v: None if v is None else fn(v)

        # the member's shortcuts hold, but for None (an enum may have a member of value None)
        fast_encode, fast_decode = (None if f is None or f[0] is type(None) else f
                                    for f in (inner.fast_encode, inner.fast_decode))
        return Converter(name, optional(item_encode), optional(item_decode), inner.converts,
                         fast_encode, fast_decode)

    def first(what: str) -> Fn:
        fns = [getattr(c, what) for c in convs]

        def run(value: Any) -> Any:
            for fn in fns:
                try:
                    return fn(value)
                except Mismatch:
                    continue
            raise Mismatch(value, name)

        return run

    return Converter(name, first("encode"), first("decode"), any(c.converts for c in convs))


def type_name(tp: Any) -> str:
    """How an annotation reads in messages: ``datetime``, ``list[UUID]``, ``Color | None``."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return "None" if tp is type(None) else tp.__name__
    text = repr(tp)
    return re.sub(r"\b(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*)", r"\1", text).replace(
        "NoneType", "None")


_LISTS = {list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection}
_SETS = {set: set, frozenset: frozenset, abc.Set: frozenset, abc.MutableSet: set}
_MAPS = {dict, abc.Mapping, abc.MutableMapping}

_cache: dict[Any, Converter] = {}
_building: dict[Any, list[Converter]] = {}
_lock = threading.RLock()


def compile_type(tp: Any) -> Converter:
    """The converter of an annotation (cached; thread-safe)."""
    try:
        return _cache[tp]
    except (KeyError, TypeError):
        pass
    with _lock:
        try:
            return _cache[tp]
        except KeyError:
            pass
        except TypeError:  # unhashable (Annotated with a dict in it): not cached
            if typing.get_origin(tp) is typing.Annotated:
                return compile_type(typing.get_args(tp)[0])
            return ANY
        conv = _compile(tp)
        _cache[tp] = conv
        return conv


def _compile(tp: Any) -> Converter:
    if tp is None or tp is type(None):
        return PLAIN[type(None)]
    if tp in _building:  # a dataclass that holds itself: resolved when first used
        later = _building[tp]
        return Converter(type_name(tp), lambda v: later[0].encode(v),
                         lambda v: later[0].decode(v), True)
    plain = PLAIN.get(tp) if isinstance(tp, type) or tp is Any else None
    if plain is not None:
        return plain
    scalar = SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is not None:
        return scalar
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    name = type_name(tp)
    if origin is typing.Annotated:
        return compile_type(args[0])
    if isinstance(tp, typing.NewType):
        return compile_type(tp.__supertype__)
    if origin is typing.Literal:
        values = list(args)
        return checked(name, lambda v: any(v == x and type(v) is type(x) for x in values))
    if origin in (typing.Union, types.UnionType):
        members = [compile_type(a) for a in args]
        members.sort(key=lambda c: c is PLAIN[type(None)])  # None last: X | None
        if not any(c.converts for c in members):
            return Converter(name, identity, identity, False)
        return _union(members, name)
    if origin in _LISTS or tp in _LISTS:
        return _each(compile_type(args[0] if args else Any), name, (list, tuple), list)
    if origin in _SETS or tp in _SETS:
        make = _SETS[origin or tp]
        return _each(compile_type(args[0] if args else Any), name,
                     (set, frozenset, list, tuple), make)
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _each(compile_type(args[0] if args else Any), name, (tuple, list), tuple)
        if args == ((),):  # tuple[()]
            return _fixed_tuple([], name)
        return _fixed_tuple([compile_type(a) for a in args], name)
    if origin in _MAPS or tp in _MAPS:
        key = args[0] if args else str
        if key is not str and key is not Any:
            return ANY  # only string keys travel in a JSON object
        return _mapping(compile_type(args[1] if args else Any), name)
    if not isinstance(tp, type):
        return ANY  # a TypeVar, a string left unresolved, a generic ivy does not know
    if issubclass(tp, enum.Enum):
        return enum_converter(tp)
    if is_model(tp):
        return model_converter(tp)
    if dataclasses.is_dataclass(tp):
        cell: list[Converter] = []
        _building[tp] = cell
        try:
            conv = _dataclass(tp, compile_type)
        finally:
            del _building[tp]
        cell.append(conv)
        return conv
    return ANY


