"""No import cycles among segworks modules, found by reading their import statements.

Every `import` / `from ... import` of a segworks module counts, at module level and inside
functions alike: a function-local import delays a cycle to the first call but does not remove it
(it still ties the two modules together, and it breaks as soon as someone moves the import to the
top). Imports under `if TYPE_CHECKING:` do not run and do not count. Importing a submodule runs
its parent package's __init__ first; that implicit step is not an edge (Python handles it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import segworks

SRC = Path(segworks.__file__).resolve().parent.parent
# Import edges (importer, imported) the check ignores: none.
KNOWN_EDGES: set[tuple[str, str]] = set()


def module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    modules = {}
    for path in sorted((SRC / "segworks").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imported_names(tree: ast.Module, package: str) -> set[str]:
    """Dotted names imported anywhere in `tree` (relative imports resolved against `package`),
    `from X import y` giving both X and X.y: the caller keeps the names that are modules."""
    names: set[str] = set()
    skipped = {id(node) for node in ast.walk(tree) if _is_type_checking_block(node)}
    for node in _walk_skipping(tree, skipped):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk_skipping(tree: ast.AST, skipped: set[int]):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack += [child for child in ast.iter_child_nodes(node) if id(child) not in skipped]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = imported_names(tree, package)
        # `from pkg import sub` imports the submodule; `from pkg import func` the package
        named = {t for t in targets if t in modules}
        graph[name] = {t for t in named if t != name and (name, t) not in KNOWN_EDGES}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
    return "cycle: " + "; ".join(edges)


def test_segworks_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "segworks.models" in graph  # the walk found the package
    found = cycles(graph)
    assert not found, "\n".join(describe(component, graph) for component in found)


def test_the_check_finds_a_cycle_through_a_function_local_import():
    tree = ast.parse("import os\n\ndef f():\n    from segworks.b import g\n")
    assert "segworks.b" in imported_names(tree, "segworks")
    graph = {"segworks.a": {"segworks.b"}, "segworks.b": {"segworks.c"}, "segworks.c": set()}
    assert cycles(graph) == []
    graph["segworks.c"].add("segworks.a")
    assert cycles(graph) == [["segworks.a", "segworks.b", "segworks.c"]]


def test_type_checking_imports_and_relative_imports():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..errors import DataError\n"
        "if TYPE_CHECKING:\n"
        "    from segworks.hidden import Thing\n"
    )
    names = imported_names(ast.parse(source), "segworks.models")
    assert {"segworks.models.sibling", "segworks.errors.DataError"} <= names
    assert not any(name.startswith("segworks.hidden") for name in names)
