"""Typed calls (docs/guides/typing.md): ``task.delay(...)`` is checked against the task
function's parameters and typed ``Call[R]``, ``task.s(...)`` is ``Signature[R]``, and for an
``async def`` task ``R`` is the awaited type. One ``mypy --strict`` run (the pinned mypy, its
cache in a temporary folder) over one file that holds every case: each line that mypy must
answer says so in a trailing comment, and mypy may say nothing else."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from common import ROOT

import ivy

#: ``# reveal: TYPE`` and ``# error: CODE`` comments are what mypy must say of their line
CASES = textwrap.dedent('''\
    from typing import Any

    import ivy

    app = ivy.Ivy("memory://typing-cases", "memory://typing-cases")


    @app.register_task(name="typing.add", queue="typing")
    def add(a: int, b: int) -> int:
        return a + b


    @ivy.register_task(name="typing.fetch", queue="typing")
    async def fetch(url: str, *, retries: int = 0) -> dict[str, int]:
        return {url: retries}


    def legacy(n: int, callback: Any) -> None:
        callback(None, n)


    old = app.register_task(legacy, name="typing.legacy", queue="typing")

    reveal_type(add.delay(1, 2))  # reveal: ivy.call.Call[int]
    reveal_type(add.delay(1, 2).result(timeout=1))  # reveal: int
    reveal_type(fetch.delay("u", retries=2))  # reveal: ivy.call.Call[dict[str, int]]
    reveal_type(add.s(1, 2))  # reveal: ivy.workflows.canvas.Signature[int]
    reveal_type(fetch.s("u"))  # reveal: ivy.workflows.canvas.Signature[dict[str, int]]
    reveal_type(add.s(1).set(queue="fast"))  # reveal: ivy.workflows.canvas.Signature[int]
    reveal_type(ivy.delayed_call(add, "not checked"))  # reveal: ivy.call.Call[Any]
    other = ivy.signature("other.task", 1, queue="other")
    reveal_type(other)  # reveal: ivy.workflows.canvas.Signature[Any]

    add.delay("1", 2)  # error: arg-type
    add.delay(1)  # error: call-arg
    add.delay(1, 2, c=3)  # error: call-arg
    fetch.delay(3)  # error: call-overload
    fetch.delay("u", retries="2")  # error: call-overload
    old.delay(1)  # error: call-arg
    count: str = add.delay(1, 2).result()  # error: assignment


    async def handler() -> int:
        total = await add.delay(1, 2)
        reveal_type(total)  # reveal: int
        page = await fetch.delay("u")
        reveal_type(page)  # reveal: dict[str, int]
        return total
''')

EXPECT = re.compile(r"#\s*(reveal|error):\s*(.+)$")
#: mypy's lines about the cases file: "cases.py:12: note: Revealed type is "..."" and
#: "cases.py:14: error: ...  [code]"
ANSWER = re.compile(r'^cases\.py:(\d+): (error|note): (.*?)(?:  \[([\w-]+)\])?$')


def expected() -> dict[int, tuple[str, str]]:
    found = {}
    for number, line in enumerate(CASES.splitlines(), 1):
        match = EXPECT.search(line)
        if match:
            found[number] = (match[1], match[2].strip())
    return found


def test_mypy_checks_task_calls(tmp_path: Path) -> None:
    cases = tmp_path / "cases.py"
    cases.write_text(CASES)
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # the editable install is an import hook
    out = subprocess.run(
        # as a user runs it (docs/guides/typing.md); ivy's own modules are checked by CI's
        # `mypy`, so only what the cases file gets is reported
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--hide-error-context",
         "--show-error-codes", "--no-pretty", "cases.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    said: dict[int, list[tuple[str, str]]] = {}
    other = []
    for line in out.stdout.splitlines():
        match = ANSWER.match(line)
        if match is None:
            if line.startswith("cases.py:") and ": note: " in line:
                continue  # the notes that follow an error (the overload variants)
            other.append(line)
            continue
        number, kind, text, code = int(match[1]), match[2], match[3], match[4]
        if kind == "note" and text.startswith("Revealed type is "):
            said.setdefault(number, []).append(("reveal", text.removeprefix(
                "Revealed type is ").strip('"')))
        elif kind == "error":
            said.setdefault(number, []).append(("error", code or text))
    assert not other, "mypy said more than the cases:\n" + out.stdout + out.stderr
    want = expected()
    lines = CASES.splitlines()
    wrong = [f"line {n}: {lines[n - 1].strip()}\n  expected {want.get(n)}, mypy: {said.get(n)}"
             for n in sorted(set(want) | set(said)) if [want[n]] * (n in want) != said.get(n, [])]
    assert not wrong, "\n".join(wrong) + "\n\nmypy's output:\n" + out.stdout + out.stderr


def test_delay_sends_through_the_registering_app() -> None:
    url = "memory://typing-delay"
    with ivy.Ivy(url, url) as app:
        @app.register_task(name="typing.mul", queue="typing-delay")
        def mul(a: int, b: int) -> int:
            return a * b

        @app.register_task(name="typing.amul", queue="typing-delay")
        async def amul(a: int, b: int) -> int:
            return a * b

        assert mul.app is app
        app.listen(queue="typing-delay", block=False)
        call = mul.delay(6, 7)
        assert isinstance(call, ivy.Call) and call.task == "typing.mul"
        assert call.result(timeout=10) == 42
        assert amul.delay(2, b=3).result(timeout=10) == 6
        with pytest.raises(TypeError, match=r"wrong arguments for task 'typing\.mul'"):
            mul.delay(1)  # type: ignore[call-arg]


def test_delay_of_an_unregistered_task_says_how_to_send_it() -> None:
    task = ivy.Task(lambda: None, name="typing.loose")
    with pytest.raises(RuntimeError, match="was not registered on an ivy app"):
        task.delay()
