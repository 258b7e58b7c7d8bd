"""The shape of the package (../shared/LAYOUT.md, docs/internals/layout.md): no import cycle
inside ``ivy/``, counting imports as Python runs them and as type checkers read them (module
level, inside functions, under ``TYPE_CHECKING``); no module over 500 lines but those still
being split, a list that only shrinks. The layers are import-linter's contracts in
pyproject.toml, run by .ci/run (`lint-imports`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ivy"
#: the longest a module may grow before it is split along its jobs
MAX_LINES = 500

#: modules over MAX_LINES still to be split
KNOWN_LONG: set[str] = set()


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ivy it imports (any import statement anywhere in it)."""
    names = module_names()
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # `from ivy.x import y` imports ivy.x.y when y is a module, else ivy.x
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in names
                           else module for alias in node.names]
            for target in targets:
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_its_members() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert found == [], (
        f"import cycles: {[sorted(c) for c in found]}; import downwards (LAYOUT.md), or type "
        "against a narrow Protocol of the lower module instead of the class above it")


def test_no_module_over_500_lines_but_the_known_ones() -> None:
    long = {str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
            if len(path.read_text().splitlines()) > MAX_LINES}
    assert long <= KNOWN_LONG, f"split along its jobs: {sorted(long - KNOWN_LONG)}"
    assert long == KNOWN_LONG, f"no longer over {MAX_LINES}: {sorted(KNOWN_LONG - long)}"

