"""The house's import rule: rooms import only rooms below them, and no module imports itself back.

A room is a package of the project; RANK lists them from the ground up. An import of a
higher room (or a circle among modules) fails here, so it fails CI, not a reader.
Imports inside functions count: they are arrows too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cxr_tuner"

# From the ground up; a room may import its own modules and any room on a lower line.
RANK = (
    ("data",),
    ("hypermodels",),
    ("search.figures",),  # figures from labels and probabilities: metrics, calibration, thresholds, their text
    ("search.engine",),
    ("search.tuning",),
    ("search.distributed",),
    ("search.final",),
    ("search.evaluation",),
    ("search.delivery",),
    ("search",),  # the search stage and the whole job: search/run.py, search/job.py
    ("cli", "__main__"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        top = ROOT / relative.parts[0]
        if relative.parts[0] in ("tests", "bench") or (top.is_dir() and not (top / "__init__.py").is_file()):
            continue  # not the package: tests, scripts, build folders, virtual environments
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _room(module: str) -> int:
    best, rank = -1, None
    for i, rooms in enumerate(RANK):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and len(room) > best:
                best, rank = len(room), i
    assert rank is not None, f"{module} is in no room of tests/test_house.py's RANK: add its room"
    return rank


def _imports(path: Path) -> set[str]:
    """The project's modules ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            if name.startswith(PACKAGE + "."):
                name = name[len(PACKAGE) + 1:]
                if name in MODULES:
                    names.add(name)
    return names


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def test_every_module_is_in_a_room():
    assert MODULES and all(_room(module) is not None for module in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_room(module):
    upward = sorted(target for target in GRAPH[module] if _room(target) > _room(module))
    assert not upward, f"{module} imports higher rooms: {upward}"


def test_no_import_circles():
    """Tarjan's strongly connected components over the import graph: each must be one module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself can fail: an engine module importing the final stage is upward."""
    assert _room("search.evaluation.evaluate") > _room("search.final.assemble") > _room("search.engine.config")
    assert _room("search.engine.config") > _room("hypermodels.registry") > _room("data.errors")
