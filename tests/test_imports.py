"""Imports flow one way: orchestrator -> evaluation -> trainers, and no module imports, directly or
through others, a module that imports it back — function-local imports included (they only hide
a cycle from the interpreter, not from the reader); imports for type annotations alone
(``if TYPE_CHECKING:``) are not imports at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "evaluation", "orchestrator")
LAYER = {name: rank for rank, name in enumerate(PACKAGES)}
"""A package may import only from packages of a lower rank (or itself)."""


def module_name(path: Path) -> str:
    """The installed name: ``trainers/loop.py`` is ``qsweep.trainers.loop``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("qsweep", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def package(module: str) -> str:
    """``trainers`` for ``qsweep.trainers.loop``."""
    return module.split(".")[1]


def project_imports() -> dict[str, set[str]]:
    """Every project module and the project modules it imports, anywhere in its body."""
    modules = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                       for inner in ast.walk(node)}  # annotations only: no import at run time
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import mod`` names a module when pkg.mod is one
                found = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                         else node.module for alias in node.names]
            else:
                continue
            targets.update(target for target in found if target in modules and target != name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(project_imports()) == []


def test_imports_flow_from_orchestrator_to_evaluation_to_trainers() -> None:
    upward = [f"{name} imports {target}" for name, targets in project_imports().items() for target in targets
              if LAYER[package(target)] > LAYER[package(name)]]
    assert upward == []


@pytest.mark.parametrize("graph", [{"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}])
def test_the_cycle_finder_finds_a_cycle(graph) -> None:
    assert cycles(graph) == [["a", "b", "c"]]
