"""No import cycle in src/ichseg, between files or between folders (docs/DESIGN.md, "Layers").

The graph is read from the source with `ast`, so lazy imports inside functions count too: a cycle
hidden in a function body is still two parts that each need the other.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, a package by its `__init__.py`."""
    found = {}
    for path in sorted((SOURCE / "ichseg").rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module that an imported dotted name lives in (None outside ichseg)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def module_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from package import module` needs that module; `from module import name`
                # needs the module.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in map(lambda n: _resolve(n, modules), targets)
                            if t and t != name}
    return graph


def folder_of(module: str) -> str:
    """The top-level folder a module belongs to; a sub-package counts with it (training/checkpoint
    is training). The files directly in src/ichseg (config, errors, fileio, device, api, cli,
    demo) are no folder: each stands for itself, the lowest ones below every folder, the surface
    above them."""
    return ".".join(module.split(".")[:2])


def folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for source, targets in module_graph().items():
        here = folder_of(source)
        graph.setdefault(here, set())
        graph[here] |= {folder_of(t) for t in targets} - {here}
    return graph


@pytest.mark.parametrize("graph", [module_graph, folder_graph], ids=["files", "folders"])
def test_there_is_no_import_cycle(graph):
    try:
        tuple(TopologicalSorter(graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_graph_sees_lazy_and_package_imports():
    files, folders = module_graph(), folder_graph()
    assert "ichseg.training.modes" in files["ichseg.api"]  # imported inside a function
    assert "ichseg.training.checkpoint.files" in files["ichseg.training.checkpoint.manifest"]
    assert "ichseg.training" in folders["ichseg.inference"]  # the predictor reads checkpoints
    assert "ichseg.models" in folders["ichseg.training"]  # validation's sliding window
    assert "ichseg.inference" not in folders["ichseg.training"]
