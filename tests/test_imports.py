"""Imports flow one way: no vitlab module imports, at any level (inside functions too), a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every vitlab module ``path`` imports anywhere in its body: ``from vitlab.a import b`` counts as vitlab.a.b
    when that is a module, else as vitlab.a."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                      for alias in node.names}
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / "vitlab").rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    module = tmp_path / "probe.py"
    module.write_text("import vitlab.x\ndef f():\n    from vitlab.y import thing\n    from vitlab import z\n")
    assert imported_modules(module, {"vitlab.x", "vitlab.y", "vitlab.z"}) == {"vitlab.x", "vitlab.y", "vitlab.z"}


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph()
    assert "vitlab.model" in graph and graph["vitlab.cli"], "the import graph was not read"
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_model_imports_nothing_from_the_rest_of_vitlab():
    graph = import_graph()
    assert graph["vitlab.model"] == set()
    experiments = set().union(*(deps for name, deps in graph.items() if name.startswith("vitlab.experiments")))
    assert "vitlab.cli" not in experiments
