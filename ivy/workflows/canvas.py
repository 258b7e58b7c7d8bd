"""The canvas: :class:`Signature` (one task with its arguments, not sent yet), and the workflows
built from signatures: :func:`chain`, :func:`group` and :func:`chord`
(docs/internals/workflows.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ivy.errors import ConfigurationError, SerializationError

#: the result type of a signature's task (``add.s(1, 2)`` is a ``Signature[int]``)
R = TypeVar("R")

#: One node of a workflow as it travels (PROTOCOL.md, "Workflows").
Node = dict[str, Any]
#: What a node builder asks of the app: the task's defaults (queue, max_retries, priority)
#: for a name, or None when this process does not register it.
TaskDefaults = Callable[[str], Mapping[str, Any] | None]
#: Checks a signature's arguments and keyword arguments as its worker will call it (``given``
#: extra leading positional arguments come from the step before), and returns them in their
#: wire form (typed tasks: ivy.annotations); raises TypeError or SerializationError.
ArgumentCheck = Callable[[str, list[Any], dict[str, Any], int],
                         tuple[list[Any], dict[str, Any]]]


class Canvas:
    """Base class of what ``delayed_call`` accepts besides a task: a signature or a workflow."""

    def node(self, new_id: Callable[[], str], defaults: TaskDefaults,
             check: ArgumentCheck | None = None, given: int = 0) -> Node:
        """This workflow as a JSON node tree, each node with an id from ``new_id`` (the ids
        are message ids, so that a step sent twice after a crash is the same message).
        ``given`` is how many positional arguments each first step receives from before."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short text naming the tasks: the workflow's ``Call.task``."""
        raise NotImplementedError

    def __or__(self, other: Canvas) -> Chain:
        """``a | b`` is ``chain(a, b)``."""
        return chain(self, other)

    def __repr__(self) -> str:
        return self.describe()


@dataclass(eq=True, repr=False)
class Signature(Canvas, Generic[R]):
    """A task name with arguments and options, to be sent later (alone or in a workflow).
    ``R`` is its task's result type when a type checker knows it (``task.s(...)``), else Any.

    ``queue``, ``priority`` and ``max_retries`` left as None take the registered task's values
    when the workflow is sent (``ivy`` and 0 for a task this process does not register)."""

    name: str
    """The task's dotted name."""
    args: tuple[Any, ...] = ()
    """Its positional arguments (a chain's later step receives the previous result first)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Its keyword arguments."""
    queue: str | None = None
    """The queue it is sent to; None: the registered task's."""
    priority: int | None = None
    """Its message's priority; None: the registered task's."""
    max_retries: int | None = None
    """How many times a failed run is retried; None: the registered task's."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise ConfigurationError(
                f"signature task name {self.name!r} is not valid: use the registered task's "
                "dotted name, such as 'package.module.function'")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ConfigurationError(
                f"queue {self.queue!r} of signature {self.name!r} must be a non-empty string")
        self.args = tuple(self.args)
        self.kwargs = dict(self.kwargs)

    def set(self, *, queue: str | None = None, priority: int | None = None,
            max_retries: int | None = None) -> Signature[R]:
        """A copy with other options: ``add.s(1, 2).set(queue="fast")``.

        Args:
            queue: the queue; None: keep this signature's.
            priority: the message's priority; None: keep this signature's.
            max_retries: how many times a failed run is retried; None: keep this signature's.

        Returns:
            The new signature (this one is unchanged).

        Raises:
            ivy.ConfigurationError: an empty ``queue``.
        """
        return Signature(
            self.name, self.args, self.kwargs,
            queue=queue if queue is not None else self.queue,
            priority=priority if priority is not None else self.priority,
            max_retries=max_retries if max_retries is not None else self.max_retries)

    def node(self, new_id: Callable[[], str], defaults: TaskDefaults,
             check: ArgumentCheck | None = None, given: int = 0) -> Node:
        """This signature as a workflow's JSON node (PROTOCOL.md, "Workflows").

        Used when a workflow is sent; the producer calls it.

        Args:
            new_id: makes the node's id (a message id).
            defaults: the registered task's queue, priority and max_retries for a name, or
                None when this process does not register it.
            check: checks the arguments as the worker will call the task, and returns them in
                their wire form; None: not checked.
            given: how many positional arguments the step receives from the step before.

        Returns:
            The node: id, task, args, kwargs, queue, and priority and max_retries when not 0.

        Raises:
            ivy.ConfigurationError: the task is not registered here and no queue is given.
            TypeError: arguments the task's signature refuses.
            ivy.SerializationError: an argument JSON cannot carry.
        """
        known = defaults(self.name) or {}
        queue = self.queue or known.get("queue")
        if queue is None:
            raise ConfigurationError(
                f"signature {self.name!r} names a task this process does not register and "
                f"gives no queue: use ivy.signature({self.name!r}, ..., queue='name'), or "
                "register the task here")
        args, kwargs = list(self.args), self.kwargs
        if check is not None:
            try:
                args, kwargs = check(self.name, args, kwargs, given)
            except SerializationError:
                raise  # names the task and the parameter already
            except TypeError as exc:
                what = (f" (it receives the previous result as its first argument, then "
                        f"{args!r})") if given else ""
                raise TypeError(f"wrong arguments for task {self.name!r} in a workflow"
                                f"{what}: {exc}") from None
        node: Node = {"id": new_id(), "task": self.name, "args": args, "kwargs": kwargs,
                      "queue": queue}
        priority = self.priority if self.priority is not None else known.get("priority", 0)
        retries = self.max_retries if self.max_retries is not None else known.get(
            "max_retries", 0)
        if priority:
            node["priority"] = priority
        if retries:
            node["max_retries"] = retries
        return node

    def describe(self) -> str:
        """The text naming this signature in a workflow's ``Call.task``.

        Returns:
            The task's name.
        """
        return self.name


@dataclass(eq=True, repr=False)
class Chain(Canvas):
    """Steps run one after the other; each step's result is the next one's first argument."""

    steps: tuple[Canvas, ...]

    def node(self, new_id: Callable[[], str], defaults: TaskDefaults,
             check: ArgumentCheck | None = None, given: int = 0) -> Node:
        nodes = []
        for i, step in enumerate(self.steps):
            nodes.append(step.node(new_id, defaults, check, given if i == 0 else 1))
        return {"chain": nodes}

    def describe(self) -> str:
        return f"chain({', '.join(s.describe() for s in self.steps)})"


@dataclass(eq=True, repr=False)
class Group(Canvas):
    """Members run in parallel; the result is the list of their results, in member order."""

    members: tuple[Canvas, ...]

    def node(self, new_id: Callable[[], str], defaults: TaskDefaults,
             check: ArgumentCheck | None = None, given: int = 0) -> Node:
        group_id = new_id()
        return {"id": group_id,
                "group": [m.node(new_id, defaults, check, given) for m in self.members]}

    def describe(self) -> str:
        if len(self.members) > 3:
            return (f"group({', '.join(m.describe() for m in self.members[:3])}, ... "
                    f"{len(self.members)} members)")
        return f"group({', '.join(m.describe() for m in self.members)})"


def _canvases(items: Iterable[Any], what: str) -> list[Canvas]:
    found = []
    for item in items:
        if not isinstance(item, Canvas):
            raise TypeError(f"{what} takes signatures (task.s(...), ivy.signature(...)), "
                            f"chains, groups and chords; got {item!r}")
        found.append(item)
    return found


def _spread(items: tuple[Any, ...]) -> Iterable[Any]:
    """``group(a, b)`` and ``group([a, b])`` alike (a generator too)."""
    if len(items) == 1 and not isinstance(items[0], Canvas) and isinstance(items[0], Iterable):
        return list(items[0])
    return items


def signature(name: str, *args: Any, queue: str | None = None, priority: int | None = None,
              max_retries: int | None = None, **kwargs: Any) -> Signature[Any]:
    """A signature of a task by name, which this process need not register.

    ``ivy.signature("other.service.task", 1, queue="other")``: ``queue`` is needed when this
    process does not register the task.

    Args:
        name: the task's dotted name.
        *args: its positional arguments.
        queue: the queue; None: the registered task's.
        priority: the message's priority; None: the registered task's.
        max_retries: how many times a failed run is retried; None: the registered task's.
        **kwargs: its keyword arguments.

    Returns:
        The signature, to send alone or in a workflow.

    Raises:
        ivy.ConfigurationError: an invalid ``name`` or an empty ``queue``.
    """
    return Signature(name, args, kwargs, queue=queue, priority=priority,
                     max_retries=max_retries)


def chain(*steps: Any) -> Chain:
    """Steps that run one after the other, each step's result the next one's first argument.

    ``chain(add.s(1, 2), mul.s(10))``: ``mul(add(1, 2), 10)``. Nested chains flatten; ``a | b``
    is ``chain(a, b)``.

    Args:
        *steps: signatures, groups, chords or chains, or one iterable of them.

    Returns:
        The chain, to send with ``ivy.delayed_call`` or ``ivy.send_task``.

    Raises:
        TypeError: a step that is not a signature or a workflow.
        ValueError: no step.
    """
    flat: list[Canvas] = []
    for step in _canvases(_spread(steps), "chain()"):
        flat.extend(step.steps if isinstance(step, Chain) else [step])
    if not flat:
        raise ValueError("chain() needs at least one step, such as chain(add.s(1, 2), "
                         "mul.s(10))")
    return Chain(tuple(flat))


def group(*members: Any) -> Group:
    """Members that run in parallel; the result is the list of theirs, in member order.

    ``group(add.s(1, 1), add.s(2, 2))``: ``[2, 4]`` (also ``group(generator)``).

    Args:
        *members: signatures, groups, chords or chains, or one iterable of them.

    Returns:
        The group, to send or to use in a workflow.

    Raises:
        TypeError: a member that is not a signature or a workflow.
        ValueError: no member.
    """
    found = _canvases(_spread(members), "group()")
    if not found:
        raise ValueError("group() needs at least one member: with none there is nothing to "
                         "wait for")
    return Group(tuple(found))


def chord(header: Iterable[Any], body: Canvas) -> Chain:
    """A group followed by a callback that receives the list of its results.

    ``chord([add.s(1, 1), add.s(2, 2)], total.s())``: ``total([2, 4])``. The callback
    ``body`` runs once every member succeeded; it never runs if one failed (the workflow's
    call fails instead).

    Args:
        header: the members: a list of signatures or workflows, or a group.
        body: the callback's signature (or workflow).

    Returns:
        The chord, as the chain of its group and its callback.

    Raises:
        TypeError: a header that is one signature, a member or a ``body`` that is not a
            signature or a workflow.
        ValueError: no member.
    """
    if isinstance(header, Canvas) and not isinstance(header, Group):
        raise TypeError(f"chord() takes a list of signatures or a group as its header, got "
                        f"{header!r}")
    members = header if isinstance(header, Group) else group(*header)
    if not isinstance(body, Canvas):
        raise TypeError(f"the callback of chord() must be a signature such as total.s(), got "
                        f"{body!r}")
    return chain(members, body)
