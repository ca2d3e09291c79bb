"""The import graph of the project's packages (every import, also those inside functions):
no module imports another that imports it back, directly or around a circle, and imports point
down the layers of DESIGN.md: workflows -> agent -> {models, instruments}; twins ->
instruments; models imports nothing of the project."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "instruments", "models", "twins", "workflows")
ALLOWED = {"workflows": {"agent", "models", "instruments", "twins"},
           "agent": {"models", "instruments"}, "twins": {"instruments"},
           "instruments": set(), "models": set()}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a.b import c` counts as a.b, or as
    a.b.c where that is a module)."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for source, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[source] = {name for name in found if name in files and name != source}
    return graph


def test_no_import_circles():
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_imports_point_down_the_layers():
    upward = [(a, b) for a, targets in import_graph().items() for b in sorted(targets)
              if b.split(".")[0] != a.split(".")[0]
              and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert upward == []
