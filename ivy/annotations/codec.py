"""A task's arguments and result, converted by its annotations: one :class:`TaskCodec` per task,
compiled on its first use (``Task.codec``), None for a task with nothing to convert."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ivy.annotations.convert import compile_type
from ivy.annotations.scalars import Converter, Fn, Mismatch
from ivy.errors import SerializationError

log = logging.getLogger("ivy")

#: a positional parameter's index, name and converter
Positional = tuple[int, str, Converter]
#: a call's positional and keyword arguments, decoded
Arguments = tuple[list[Any], dict[str, Any]]
#: a converter in one direction, for the hot loops: the type its shortcut takes (None: no
#: shortcut), the shortcut, and the converter's function (see :func:`_through`)
Step = tuple[Any, Fn, Fn]


def _step(conv: Converter, what: str) -> Step:
    """``(kind, shortcut, function)`` of ``conv`` in the direction ``what``."""
    fn: Fn = getattr(conv, what)
    kind, fast = getattr(conv, f"fast_{what}") or (None, fn)
    return kind, fast, fn


class BadArguments(ValueError):
    """Arguments that do not fit their annotations (a worker rejects the message with
    ``bad arguments for task ...: `` and this text)."""


class TaskCodec:
    """What converts for one task: the parameters whose annotation converts (by position
    and by name; ``*args`` and ``**kwargs`` items), and the result."""

    __slots__ = ("_decode", "_encode", "_names", "_result_decode", "_result_encode", "_width",
                 "by_name", "converts_args", "name", "positional", "result", "var_args",
                 "var_kwargs")

    def __init__(self, name: str, positional: list[Positional], by_name: dict[str, Converter],
                 var_args: Converter | None, var_kwargs: Converter | None,
                 result: Converter | None, width: int) -> None:
        self.name = name
        self.positional = positional
        self.by_name = by_name
        self.var_args = var_args
        self.var_kwargs = var_kwargs
        #: the return annotation's converter, when it converts
        self.result = result
        #: whether any argument converts (else only the result does)
        self.converts_args = bool(positional or by_name or var_args or var_kwargs)
        #: how many positional parameters the function has (more go to ``*args``)
        self._width = width
        self._names = {index: param for index, param, _ in positional}
        # per direction: (index, function) of the positional parameters, the function of
        # ``*args`` items, and name -> function of the keywords (what the hot loop reads)
        self._encode = self._table("encode")
        self._decode = self._table("decode")
        self._result_encode = None if result is None else _step(result, "encode")
        self._result_decode = None if result is None else _step(result, "decode")

    def _table(self, what: str) -> tuple[list[tuple[int, Step]], Fn | None, dict[str, Fn],
                                         Fn | None]:
        return ([(index, _step(conv, what)) for index, _, conv in self.positional],
                None if self.var_args is None else getattr(self.var_args, what),
                {param: getattr(conv, what) for param, conv in self.by_name.items()},
                None if self.var_kwargs is None else getattr(self.var_kwargs, what))

    def __repr__(self) -> str:
        names = [n for _, n, _ in self.positional] + list(self.by_name)
        return f"<TaskCodec {self.name} {sorted(set(names))} result={self.result is not None}>"

    def _walk(self, args: Sequence[Any], kwargs: Mapping[str, Any],
              table: tuple[list[tuple[int, Step]], Fn | None, dict[str, Fn], Fn | None],
              first: int = 0) -> tuple[list[Any], dict[str, Any]]:
        positional, var_args, named, var_kwargs = table
        out = list(args)
        count = len(out)
        index, param = 0, ""
        try:
            # _through's rule, written out: a call per argument cost ~10% of the walk
            for index, (kind, fast, fn) in positional:
                if first <= index < count:
                    value = out[index]
                    if type(value) is kind:
                        try:
                            out[index] = fast(value)
                            continue
                        except Exception:  # noqa: S110 - the converter's function says why
                            pass
                    out[index] = fn(value)
            if var_args is not None:
                for index in range(max(self._width, first), count):
                    out[index] = var_args(out[index])
            index = -1
            if not kwargs:
                return out, {}
            new = dict(kwargs)
            for param, value in kwargs.items():
                convert = named.get(param, var_kwargs)
                if convert is not None:
                    new[param] = convert(value)
            return out, new
        except Mismatch as exc:
            if index < 0:
                raise BadArguments(f"keyword {param!r}: {exc}") from None
            param = self._names.get(index) or f"*args[{index - self._width}]"
            raise BadArguments(f"argument {index + 1} ({param!r}): {exc}") from None

    def encode_args(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, first: int = 0
                    ) -> tuple[list[Any], dict[str, Any]]:
        """The producer's side: typed values (or their wire forms) -> wire forms, the
        positional arguments from index ``first`` on (those before are left as they are: a
        workflow step's first argument is the previous step's result, sent later); raises
        :class:`ivy.SerializationError` naming the parameter, the value and the type."""
        try:
            return self._walk(args, kwargs, self._encode, first)
        except BadArguments as exc:
            raise SerializationError(
                f"task {self.name!r}, {exc}: pass a value of the annotated type or its JSON "
                "form (PROTOCOL.md, 'Typed arguments and results')") from None

    def decode_args(self, args: Sequence[Any], kwargs: Mapping[str, Any]
                    ) -> tuple[list[Any], dict[str, Any]]:
        """The worker's side: wire forms -> typed values (new list and dict; the message
        keeps its own, for a retry); raises :class:`BadArguments`."""
        return self._walk(args, kwargs, self._decode)

    def encode_result(self, value: Any) -> Any:
        """The worker's side: the task's return value -> its wire form; raises
        :class:`ivy.SerializationError`."""
        assert self._result_encode is not None and self.result is not None
        try:
            return _through(self._result_encode, value)
        except Mismatch as exc:
            raise SerializationError(
                f"the result of task {self.name!r} does not fit its return annotation "
                f"{self.result.name}: {exc}") from None

    def decode_result(self, value: Any) -> Any:
        """The producer's side: a result's wire form -> the return annotation's type;
        raises :class:`Mismatch`."""
        assert self._result_decode is not None
        return _through(self._result_decode, value)


def _through(step: Step, value: Any) -> Any:
    """``value`` converted by the shortcut of ``step`` (see :func:`_step`) when it takes it,
    else (or when it raises) by the converter's own function, which says why it cannot."""
    kind, fast, fn = step
    if type(value) is kind:
        try:
            return fast(value)
        except Exception:  # noqa: S110 - the converter's function says why
            pass
    return fn(value)


def hints_of(func: Callable[..., Any], name: str) -> dict[str, Any] | None:
    """The resolved annotations of ``func``; None (logged) when they cannot be resolved."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # NameError for a name not defined, anything a hint raises
        log.warning("task %r: its annotations cannot be resolved (%s: %s); its arguments and "
                    "result are passed as they travel, unconverted", name,
                    type(exc).__name__, exc)
        return None


def compile_task(name: str, func: Callable[..., Any], signature: inspect.Signature | None,
                 style: str) -> TaskCodec | None:
    """The codec of a task, or None when no parameter and not the result converts (such a
    task costs nothing more than an unannotated one)."""
    if signature is None:
        return None
    raw = getattr(func, "__annotations__", None)
    if not raw:
        return None
    hints = hints_of(func, name)
    if hints is None:
        return None
    try:
        return _build(name, signature, style, hints)
    except Exception as exc:  # a dataclass with unresolvable field annotations, say
        log.warning("task %r: its annotations cannot be compiled (%s: %s); its arguments and "
                    "result are passed as they travel, unconverted", name,
                    type(exc).__name__, exc)
        return None


def _build(name: str, signature: inspect.Signature, style: str, hints: dict[str, Any]
           ) -> TaskCodec | None:
    params = list(signature.parameters.values())
    if style == "callback":  # its last positional parameter is the callback, not an argument
        last = max((i for i, p in enumerate(params) if p.kind in (
            p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), default=None)
        if last is not None:
            params.pop(last)
    positional: list[Positional] = []
    by_name: dict[str, Converter] = {}
    var_args = var_kwargs = None
    width = 0
    for param in params:
        conv = compile_type(hints[param.name]) if param.name in hints else None
        converts = conv is not None and conv.converts
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            if converts:
                assert conv is not None
                positional.append((width, param.name, conv))
                if param.kind is param.POSITIONAL_OR_KEYWORD:
                    by_name[param.name] = conv
            width += 1
        elif param.kind is param.KEYWORD_ONLY and converts:
            assert conv is not None
            by_name[param.name] = conv
        elif param.kind is param.VAR_POSITIONAL and converts:
            var_args = conv
        elif param.kind is param.VAR_KEYWORD and converts:
            var_kwargs = conv
    result = None
    if style != "callback" and "return" in hints:
        conv = compile_type(hints["return"])
        result = conv if conv.converts else None
    codec = TaskCodec(name, positional, by_name, var_args, var_kwargs, result, width)
    if not codec.converts_args and result is None:
        return None
    return codec


__all__ = ["Arguments", "BadArguments", "TaskCodec", "compile_task"]
