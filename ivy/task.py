"""Tasks: registered functions with a unique dotted name, in one of three calling styles (``sync``,
``async``, ``callback``), and the registry that maps names to them."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from ivy.annotations import TaskCodec, compile_task
from ivy.errors import ConfigurationError, TaskNotRegistered
from ivy.message import MAX_RETRIES
from ivy.retries import DEFAULT_POLICY, Backoff, RetryPolicy
from ivy.timing.ratelimit import parse_rate_limit

if TYPE_CHECKING:
    from ivy.call import Call
    from ivy.workflows.canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")
#: the awaited type of an ``async def`` task's coroutine
T = TypeVar("T")
Style = Literal["sync", "async", "callback"]
STYLES: tuple[str, ...] = ("sync", "async", "callback")
CALLBACK_NAMES = ("callback", "cb")
Finished = Callable[[Any], None]
DEFAULT_MAX_RETRIES = 3


class Sender(Protocol):
    """What :meth:`Task.delay` needs of the app a task was registered on (an :class:`ivy.Ivy`)."""

    def send_task(self, task: Any, args: Iterable[Any] = (),
                  kwargs: Mapping[str, Any] | None = None) -> Call[Any]:
        """Send one call of ``task``; see :meth:`ivy.Ivy.send_task`."""
        ...


def detect_style(func: Callable[..., Any]) -> Style:
    """coroutine function -> async; last parameter named callback/cb -> callback; else sync."""
    if inspect.iscoroutinefunction(func):
        return "async"
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return "sync"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional and positional[-1].name in CALLBACK_NAMES:
        return "callback"
    return "sync"


class Task(Generic[P, R]):
    """A registered function. Calling the task calls the function locally, in this process."""

    def __init__(
        self,
        func: Callable[P, R],
        *,
        name: str,
        queue: str = "ivy",
        finished: Finished | None = None,
        priority: int = 0,
        retry: bool = False,
        max_retries: int = 0,
        reserve_time: float | None = None,
        timeout: float | None = None,
        time_limit: float | None = None,
        style: Style | None = None,
        route: str | None = None,
        rate_limit: str | None = None,
        unique_for: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        dont_retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        backoff: Backoff | None = None,
        jitter: bool = True,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError(
                f"task name {name!r} is not valid: use a non-empty dotted string of at most 200 "
                "characters, such as 'package.module.function'"
            )
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(
                f"queue name {queue!r} for task {name!r} must be a non-empty string")
        if style is not None and style not in STYLES:
            raise ConfigurationError(f"style {style!r} for task {name!r} is not one of {STYLES}")
        if not isinstance(priority, int) or not 0 <= priority <= 255:
            raise ConfigurationError(
                f"priority {priority!r} for task {name!r} must be an int from 0 to 255")
        if not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
            raise ConfigurationError(f"max_retries {max_retries!r} for task {name!r} must be "
                                     f"an int from 0 to {MAX_RETRIES}")
        for label, value in (("reserve_time", reserve_time), ("timeout", timeout),
                             ("time_limit", time_limit)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigurationError(
                    f"{label} {value!r} for task {name!r} must be a number of seconds > 0")
        if route is not None and (not isinstance(route, str) or not route):
            raise ConfigurationError(
                f"route {route!r} for task {name!r} must be a non-empty string (an AMQP "
                "routing key such as 'testpackage.route1') or None")
        if unique_for is not None and (isinstance(unique_for, bool) or not isinstance(
                unique_for, (int, float)) or unique_for <= 0):
            raise ConfigurationError(
                f"unique_for {unique_for!r} for task {name!r} must be a number of seconds > 0 "
                "(or None: calls are not unique)")
        if finished is not None and not callable(finished):
            raise ConfigurationError(f"finished {finished!r} for task {name!r} must be callable")
        self.func = func
        self.name = name
        self.queue = queue
        self.finished = finished
        self.priority = priority
        # max_retries > 0 implies retry; retry=True alone allows DEFAULT_MAX_RETRIES retries.
        self.retry = bool(retry) or max_retries > 0
        self.max_retries = max_retries or (DEFAULT_MAX_RETRIES if retry else 0)
        self.reserve_time = reserve_time
        #: the soft limit: an exception raised in the task (the execution module)
        self.timeout = timeout
        #: the hard limit: the task runs in a process of its own, killed past it (ivy.worker.runner)
        self.time_limit = None if time_limit is None else float(time_limit)
        #: the original's route: the AMQP routing key where the queue URL names an exchange;
        #: other backends ignore it
        self.route = route
        self.style: Style = style or detect_style(func)
        #: calls started per period across all workers (ivy.timing.ratelimit), or None
        self.rate_limit = parse_rate_limit(rate_limit, name)
        #: seconds a call with the same arguments is not sent again (ivy.producer.unique)
        self.unique_for = None if unique_for is None else float(unique_for)
        #: which failures are retried, and after how long (ivy.retries)
        self.retry_policy = DEFAULT_POLICY if (
            retry_on is None and not dont_retry_on and backoff is None and jitter is True
        ) else RetryPolicy.build(name, retry_on=retry_on, dont_retry_on=dont_retry_on,
                                 backoff=backoff, jitter=jitter)
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
        # Fast path of check_arguments: a function of plain required positional parameters.
        self._arity: int | None = None
        if self.signature is not None and all(
            p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
            for p in self.signature.parameters.values()
        ):
            self._arity = len(self.signature.parameters) - (self.style == "callback")
        functools.update_wrapper(self, func)
        #: the app that registered this task (``register_task`` sets it): where
        #: :meth:`delay` sends. None for a Task made directly
        self.app: Sender | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r} style={self.style}>"

    # Typed calls: P checks the arguments; R is the result, or for an ``async def`` task
    # (whose R is a coroutine) the coroutine's awaited type T. The first overload matches
    # async tasks only, by the type of ``self``.

    @overload
    def delay(self: Task[P, Coroutine[Any, Any, T]], *args: P.args,
              **kwargs: P.kwargs) -> Call[T]: ...

    @overload
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]: ...

    def delay(self, *args: Any, **kwargs: Any) -> Call[Any]:
        """Call the task on a worker, through the app that registered it.

        ``add.delay(1, 2)`` is ``app.send_task(add, (1, 2))``. A type checker checks the
        arguments against the task function's parameters and types the call: ``Call[int]``
        for ``def add(a: int, b: int) -> int``, and for an ``async def`` task the type its
        coroutine returns. For per-call options (queue, delay, callback) use
        :meth:`ivy.Ivy.send_task`; a callback-style task (the original's ``callback``
        last parameter) is called with :func:`ivy.delayed_call`.

        Args:
            *args: the task's positional arguments.
            **kwargs: the task's keyword arguments.

        Returns:
            The call's handle.

        Raises:
            RuntimeError: the task was made directly, not registered on an app.
            TypeError: arguments the task's signature refuses.
            ivy.SerializationError: an argument JSON cannot carry.
            ivy.PublishError: the queue backend refused the message at once.
        """
        if self.app is None:
            raise RuntimeError(
                f"task {self.name!r} was not registered on an ivy app, so delay() has nowhere "
                "to send it: register it with @ivy.register_task(...) or app.register_task(...), "
                "or send it with app.delayed_call(task, ...)")
        return self.app.send_task(self, args, kwargs)

    @overload
    def s(self: Task[P, Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> Signature[T]: ...

    @overload
    def s(self, *args: Any, **kwargs: Any) -> Signature[R]: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """A signature of this task with these arguments, for workflows:
        ``ivy.chain(add.s(1, 2), mul.s(10))`` (see :mod:`ivy.workflows`). Typed
        ``Signature[R]``, ``R`` being the task's result (the awaited one, for an ``async def``
        task). Its arguments are not checked by a type checker, as they may be partial: a step
        of a chain receives the previous result as its first argument on top of them. They
        are checked at send.

        Args:
            *args: the task's positional arguments (perhaps the first ones only).
            **kwargs: the task's keyword arguments.

        Returns:
            The signature, to send alone or in a workflow.
        """
        from ivy.workflows.canvas import Signature

        return Signature(self.name, args, kwargs)

    @functools.cached_property
    def codec(self) -> TaskCodec | None:
        """How the task's arguments and result convert by their annotations
        (:mod:`ivy.annotations`), compiled on first use; None when nothing converts."""
        return compile_task(self.name, self.func, self.signature, self.style)

    def check_arguments(self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check arguments against the task function's parameters, as a direct call would.

        A callback-style task's ``callback`` parameter is left out: the worker passes it.

        Args:
            args: the positional arguments.
            kwargs: the keyword arguments.

        Raises:
            TypeError: the arguments don't fit the function.
        """
        if self.signature is None or (self._arity == len(args) and not kwargs):
            return
        if self.style == "callback":
            self.signature.bind(*args, _noop_callback, **kwargs)
        else:
            self.signature.bind(*args, **kwargs)


#: The original's option names (ivy for Node.js: camelCase) and ours, -> register_task keyword.
OPTION_NAMES: dict[str, str] = {
    "name": "name", "queue": "queue", "priority": "priority", "retry": "retry",
    "maxRetries": "max_retries", "max_retries": "max_retries", "route": "route",
    "reserveTime": "reserve_time", "reserve_time": "reserve_time", "timeout": "timeout",
    "time_limit": "time_limit", "timeLimit": "time_limit",
    "style": "style", "rate_limit": "rate_limit", "rateLimit": "rate_limit",
    "unique_for": "unique_for", "uniqueFor": "unique_for",
    "retry_on": "retry_on", "dont_retry_on": "dont_retry_on", "backoff": "backoff",
    "jitter": "jitter",
}


def merge_options(options: Any, keywords: dict[str, Any]) -> dict[str, Any]:
    """The original's options dict (``{"name": ..., "maxRetries": 10, ...}``) merged with the
    keywords given beside it (None: not given). A key that is unknown, or that says something
    else than a keyword or another spelling of the same option, is refused."""
    if options is None:
        return keywords
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"register_task options must be a dict such as {{'name': 'pkg.task', 'queue': "
            f"'pkg'}}, got {type(options).__name__} {options!r}")
    merged = dict(keywords)
    spelled: dict[str, str] = {}
    for key, value in options.items():
        keyword = OPTION_NAMES.get(key) if isinstance(key, str) else None
        if keyword is None:
            raise ConfigurationError(
                f"unknown task option {key!r}: accepted are {', '.join(OPTION_NAMES)}")
        if keyword in spelled and merged[keyword] != value:
            raise ConfigurationError(
                f"task options {spelled[keyword]!r} and {key!r} contradict each other "
                f"({merged[keyword]!r} vs {value!r}): give one of them")
        if keyword not in spelled and merged.get(keyword) is not None and (
                merged[keyword] != value):
            raise ConfigurationError(
                f"task option {key!r}={value!r} contradicts the keyword {keyword}="
                f"{merged[keyword]!r}: give it once")
        merged[keyword] = value
        spelled[keyword] = key
    return merged


def merge_dicts(first: Mapping[str, Any] | None, second: Mapping[str, Any]) -> dict[str, Any]:
    """Two options dicts given in two places; the same key twice is refused."""
    if first is None:
        return dict(second)
    both = set(first) & set(second)
    if both:
        raise ConfigurationError(f"task options {sorted(both)} given twice: give them once")
    return {**first, **second}


def build_task(func: Callable[..., Any], finished: Finished | None,
               given: Mapping[str, Any]) -> Task[Any, Any]:
    """A Task for ``func`` from merged options (None: not given, the default applies)."""
    if isinstance(func, Task):
        func = func.func
    if not callable(func):
        raise ConfigurationError(f"register_task needs a function, got {func!r}")
    return Task(
        func, name=given["name"] or f"{func.__module__}.{func.__qualname__}",
        queue=given["queue"] if given["queue"] is not None else "ivy", finished=finished,
        priority=given["priority"] if given["priority"] is not None else 0,
        retry=bool(given["retry"]),
        max_retries=given["max_retries"] if given["max_retries"] is not None else 0,
        reserve_time=given["reserve_time"], timeout=given["timeout"],
        time_limit=given.get("time_limit"), style=given["style"],
        route=given["route"], rate_limit=given.get("rate_limit"),
        unique_for=given.get("unique_for"), retry_on=given.get("retry_on"),
        dont_retry_on=given.get("dont_retry_on") or (), backoff=given.get("backoff"),
        jitter=given["jitter"] if given.get("jitter") is not None else True)


def _noop_callback(err: Any, result: Any = None) -> None:
    """Placeholder used only to check a callback-style signature."""


class Registry:
    """Dotted task name -> Task. Thread-safe; one per :class:`ivy.Ivy`."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._by_func: dict[int, Task[Any, Any]] = {}
        self._lock = threading.Lock()

    def add(self, task: Task[Any, Any]) -> None:
        with self._lock:
            old = self._tasks.get(task.name)
            if old is not None and getattr(old.func, "__qualname__", None) != getattr(
                task.func, "__qualname__", None
            ):
                raise ConfigurationError(
                    f"task name {task.name!r} is already registered to {_describe(old.func)}; "
                    f"names must be unique: give {_describe(task.func)} another name"
                )
            if old is not None:
                self._by_func.pop(id(old.func), None)
            self._tasks[task.name] = task
            self._by_func[id(task.func)] = task

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def tasks(self) -> list[Task[Any, Any]]:
        """The registered tasks, in the order of their names."""
        tasks = dict(self._tasks)  # a snapshot: another thread may register meanwhile
        return [tasks[name] for name in sorted(tasks)]

    def resolve(self, ref: Any) -> Task[Any, Any]:
        """Find the task for a Task, a registered function or a name."""
        if isinstance(ref, Task):
            return ref
        if isinstance(ref, str):
            task = self._tasks.get(ref)
        elif callable(ref):
            task = self._by_func.get(id(ref))
        else:
            raise TypeError(
                f"expected a task, a registered function or a task name, got {ref!r}"
            )
        if task is None:
            raise TaskNotRegistered(self.not_registered_message(ref))
        return task

    def close_names(self, name: str) -> list[str]:
        """The registered names most like ``name`` (a typo, a missing package prefix)."""
        import difflib  # here: only an unknown name needs it, and it costs ~0.1 MB

        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.8)
        # "add" for "app.add": the same last part is closer than any spelling
        tail = [n for n in names if n.rpartition(".")[2] == name.rpartition(".")[2]]
        return list(dict.fromkeys([*tail, *close]))[:3]

    def not_registered_message(self, ref: Any, queue: str | None = None) -> str:
        what = repr(ref) if isinstance(ref, str) else _describe(ref)
        where = f" on queue {queue!r}" if queue else ""
        known = ", ".join(self.names()) or "(none)"
        close = self.close_names(ref) if isinstance(ref, str) else []
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return (
            f"unknown task {what}{where}: registered here are {known}.{hint} Register it with "
            "@ivy.register_task(name=...) in a module this process imports"
        )

    def __len__(self) -> int:
        return len(self._tasks)


def _describe(func: Any) -> str:
    module = getattr(func, "__module__", "?")
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"
