"""The import graph of the project's packages (every import, also those inside functions):
no module imports another that imports it back, directly or around a circle, and imports point
down the layers of ARCHITECTURE.md: workflows -> agent -> {models, instruments}; twins ->
instruments; models imports nothing of the project. Inside the layers, the rooms: instruments
holds devices/, session_file/ and utils/ only; utils imports nothing of the project; the
bridges import only the wire transport; workflows holds cli/, training/, replay/, report/,
web/ and the session assembly, and nothing but the CLI imports the CLI."""

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


ROOMS = {"instruments": {"devices", "session_file", "utils"},
         "workflows": {"cli", "training", "replay", "report", "web", "session_assembly",
                       "terminal", "__main__"}}


def test_each_layer_holds_its_rooms_only():
    for layer, rooms in ROOMS.items():
        found = {p.stem if p.is_file() else p.name for p in (REPO / layer).iterdir()
                 if (p.is_dir() and (p / "__init__.py").exists())
                 or (p.suffix == ".py" and p.name != "__init__.py")}
        assert found == rooms, layer


def test_utils_import_nothing_of_the_project_but_utils():
    outside = [(a, b) for a, targets in import_graph().items() if a.startswith("instruments.utils")
               for b in targets if not b.startswith("instruments.utils")]
    assert outside == []


def test_the_bridges_import_only_the_wire_transport():
    """They run in the instrument PC's own Python (numpy 2, none of our dependencies)."""
    transport = {"instruments.devices.rpc_server", "instruments.devices.jsonrpc",
                 "instruments.devices.netstring", "instruments.devices.wire_arrays",
                 "instruments.devices.stage_request", "instruments.devices.errors",
                 "instruments.devices.control_policy",
                 "instruments.devices.bridges",
                 "instruments", "instruments.devices"}
    graph = import_graph()
    reached, todo = set(), [m for m in graph if m.startswith("instruments.devices.bridges")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert {m for m in reached if not m.startswith("instruments.devices.bridges")} <= transport


def test_nothing_but_the_cli_imports_the_cli():
    inward = [(a, b) for a, targets in import_graph().items() for b in targets
              if b.startswith("workflows.cli") and not a.startswith("workflows.cli")
              and a != "workflows.__main__"]
    assert inward == []
