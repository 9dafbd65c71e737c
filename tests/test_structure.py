"""The package's import graph: no cycles, and nothing imports the ``lowlux`` command's module.

Every ``import`` statement counts, also those inside functions (lazy imports still tie the modules
together). A name imported from a package counts as importing its submodule when one has that name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "worker" / "lowlux"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in files}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in files:
                        edges.add(f"{target}.{alias.name}")
                    elif target in files:
                        edges.add(target)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"lowlux.cli", "lowlux.options", "lowlux.server.loop", "lowlux.client.api"} <= set(graph)
    assert "lowlux.options" in graph["lowlux.client.command"]  # relative imports resolve
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_nothing_imports_cli():
    """``lowlux.cli`` is the console entry point only (and ``python -m lowlux``'s); what commands share
    lives in ``lowlux.options``."""
    importers = sorted(name for name, edges in import_graph().items() if "lowlux.cli" in edges)
    assert importers == ["lowlux.__main__"]


def test_no_module_is_too_long_for_its_concern():
    """The worker's modules stay small enough to read as one concern each."""
    worker_modules = [*PACKAGE.glob("server/*.py"), *PACKAGE.glob("client/*.py"),
                      *(PACKAGE / f"{m}.py" for m in ("cli", "batch", "jobs", "protocol", "config", "keys",
                                                         "demo", "naming", "options"))]
    long = {module_name(p): n for p in worker_modules if (n := len(p.read_text().splitlines())) > 360}
    assert long == {}
