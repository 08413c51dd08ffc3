"""avctl's import graph has no cycle: every import in avctl/ and in the modality plugins (which install as
`avctl.modalities.*`) counts, function-level ones included; only imports under `if TYPE_CHECKING:` are left out,
since they never run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for avctl/ and the plugins in the top-level modalities/ folder."""
    found: dict[str, Path] = {}
    for package, folder in (("avctl", ROOT / "avctl"), ("avctl.modalities", ROOT / "modalities")):
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if rel.parts[0] == "modalities" and package == "avctl":
                continue  # avctl/modalities is a symlink to the top-level folder, walked as avctl.modalities
            parts = [package, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name `module` imports anywhere in its body (functions and classes included), skipping the
    bodies of `if TYPE_CHECKING:` blocks. `from X import Y` yields `X.Y` as well as `X` (Y may be a submodule)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module → the avctl modules it imports. An import of `a.b.c` points at the deepest of `a.b.c`, `a.b`, `a` that
    is one of ours."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for imported in _imported(tree, name, path.name == "__init__.py"):
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each module that lies on a cycle, deduplicated: each is a list of modules whose
    last imports its first."""
    found: dict[frozenset[str], list[str]] = {}
    for start in sorted(graph):
        # breadth-first search back to `start`: the shortest cycle through it
        parents: dict[str, str] = {}
        frontier = [start]
        path: list[str] | None = None
        while frontier and path is None:
            nxt: list[str] = []
            for node in frontier:
                for target in sorted(graph.get(node, ())):
                    if target == start:
                        path = [node]
                        while path[-1] != start:
                            path.append(parents[path[-1]])
                        path.reverse()
                        break
                    if target not in parents:
                        parents[target] = node
                        nxt.append(target)
                if path is not None:
                    break
            frontier = nxt
        if path is not None:
            found.setdefault(frozenset(path), path)
    return list(found.values())


def test_graph_sees_function_level_imports_and_skips_type_checking():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from avctl.train import Trainer\n"
        "def f():\n    from avctl.cache import Sample\n    import avctl.io\n"
    )
    names = _imported(tree, "avctl.x", False)
    assert {"avctl.cache", "avctl.cache.Sample", "avctl.io"} <= names
    assert not any(n.startswith("avctl.train") for n in names)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    assert "avctl.modalities.base" in graph and "avctl.train" in graph
    found = cycles(graph)
    assert not found, "import cycles (each module imports the next, the last imports the first):\n" + "\n".join(
        "  " + " → ".join([*cycle, cycle[0]]) for cycle in found
    )
