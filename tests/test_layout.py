"""The package's imports point one way: cli -> pipeline -> methods and io -> model access -> record, options, ...

Imports are read from the source (module level and inside functions alike), so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "headpatch"

# Each layer may import its own and the layers after it, never one before it.
LAYERS = [
    {"headpatch.cli"},
    {"headpatch.pipeline", "headpatch.plan", "headpatch.recipe"},
    {"headpatch.pear", "headpatch.qrhead", "headpatch.evaluation", "headpatch.io"},
    {"headpatch.loading", "headpatch.runtime", "headpatch.essays"},
    {"headpatch.record", "headpatch.options", "headpatch.typed", "headpatch.architectures", "headpatch.heads",
     "headpatch.errors", "headpatch._version", "headpatch.stats", "headpatch.staging"},
]
# What one method or io package may take from another (everything else between them is forbidden).
ALLOWED_ACROSS = {
    ("headpatch.evaluation", "headpatch.qrhead"),  # the retrieval task scores with the model's QR heads
    ("headpatch.evaluation", "headpatch.pear"),  # the copy task is PEAR's proxy task
    ("headpatch.evaluation", "headpatch.io"),  # reports are staged and published like exports
    ("headpatch.io", "headpatch.pear"),  # the streaming fold multiplies head columns as pear.fold does
    ("headpatch.qrhead", "headpatch.io"),  # data and head-list files are read with io.files
}
METHODS = 2  # the layer whose packages may only use each other as ALLOWED_ACROSS says


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headpatch"):
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names if alias.name.startswith("headpatch"))
        found[_module_name(path)] = names
    modules = set(found)
    return {module: {name for name in names if name in modules} - {module} for module, names in found.items()}


def _unit(module: str) -> str:
    """The layer entry a module belongs to (its package for methods and io, itself for top-level modules)."""
    for layer in LAYERS:
        for unit in layer:
            if module == unit or module.startswith(unit + "."):
                return unit
    return module


def _layer(module: str) -> int | None:
    unit = _unit(module)
    return next((i for i, layer in enumerate(LAYERS) if unit in layer), None)


def test_every_module_has_a_layer():
    assert [m for m in _imports() if m != "headpatch" and _layer(m) is None] == []


def test_imports_point_one_way():
    wrong = []
    for module, imported in _imports().items():
        if module == "headpatch":  # the package root re-exports the API lazily
            continue
        for name in imported - {"headpatch"}:
            here, there = _layer(module), _layer(name)
            across = _unit(module) != _unit(name) and here == there == METHODS
            if there < here or (across and (_unit(module), _unit(name)) not in ALLOWED_ACROSS):
                wrong.append(f"{module} -> {name}")
    assert sorted(wrong) == []


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_no_import_cycles():
    # a package's __init__ re-exporting its submodules is not a cycle; a submodule importing a sibling back is
    graph = {module: {name for name in imported if not module.startswith(name + ".") and name != "headpatch"}
             for module, imported in _imports().items()}
    in_cycles = sorted(module for module in graph if module in _reachable(graph, module))
    assert in_cycles == []


@pytest.mark.parametrize("module", ["headpatch.record", "headpatch.options", "headpatch.typed", "headpatch.heads"])
def test_the_bottom_layer_imports_nothing_above_it(module):
    assert all(_layer(name) == len(LAYERS) - 1 for name in _imports()[module])
