"""The package's layering, read from the source with ``ast`` (module-level and function-local imports alike).

Layers, lowest first: errors, files, threads < physics < data < learn < {maps, evaluate} < cohort < {cli, _napari}
< __main__. A module imports only
its own layer or lower; maps and evaluate do not import each other; _napari does not import cli; nothing outside
_napari imports the GUI stack (napari, Qt, magicgui, psygnal); and the package's import graph has no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = "napari_rverdict"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

LAYER = {"errors": 0, "files": 0, "threads": 0, "physics": 1, "data": 2, "learn": 3, "maps": 4, "evaluate": 4,
         "cohort": 5, "cli": 6, "_napari": 6, "__main__": 7}
SIBLINGS_APART = {("maps", "evaluate"), ("evaluate", "maps"), ("_napari", "cli"), ("cli", "_napari")}
GUI = ("napari", "qtpy", "superqt", "magicgui", "psygnal", "PyQt5", "PyQt6", "PySide2", "PySide6")

# Known violations in files owned by other branches, each to be removed when that branch lands:
# (importer module, imported module) -> why. Keep this list empty once they are fixed.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, name: str) -> list[tuple[str, int]]:
    """Every module ``path`` imports (absolute names, relative imports resolved), anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]  # `from pkg import submodule`
    return out


def _graph() -> dict[str, dict[str, int]]:
    """importer -> {imported package module: line} over modules of the package (known modules only)."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for m, path in modules.items():
        for target, line in _imports(path, m):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != m and target.startswith(PKG + ".") and not m.startswith(target + "."):
                graph[m].setdefault(target, line)
    return graph


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _report(violations: list[str]) -> str:
    return f"{len(violations)} layering violation(s):\n  " + "\n  ".join(violations)


def test_graph_sees_module_level_and_function_local_imports():
    g = _graph()
    assert f"{PKG}.physics.protocol" in g[f"{PKG}.data.dwi"]  # module level
    assert f"{PKG}.maps.predict" in g[f"{PKG}.cli.volume"]  # inside a command function


def test_layers():
    violations = []
    for m, targets in _graph().items():
        src = _layer_of(m)
        if src is None:
            continue
        for t, line in targets.items():
            dst = _layer_of(t)
            if dst is None or (m, t) in ALLOWED:
                continue
            if src not in LAYER or dst not in LAYER:
                violations.append(f"{m} (line {line}) imports {t}: a layer missing from LAYER")
            elif LAYER[dst] > LAYER[src]:
                violations.append(f"{m} (line {line}) imports {t}: {dst} is above {src}")
            elif (src, dst) in SIBLINGS_APART:
                violations.append(f"{m} (line {line}) imports {t}: {src} must not import {dst}")
    assert not violations, _report(violations)


def test_core_does_not_import_the_gui():
    violations = []
    for m, path in _modules().items():
        if _layer_of(m) == "_napari":
            continue
        for target, line in _imports(path, m):
            top = target.split(".")[0]
            if top in GUI or top.startswith("PyQt"):
                violations.append(f"{m} (line {line}) imports {target}")
    assert not violations, _report(violations)


def test_no_import_cycles():
    graph = _graph()
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, {}):
            if (node, nxt) in ALLOWED:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, f"{len(cycles)} import cycle(s):\n  " + "\n  ".join(cycles)


def test_allowed_violations_still_exist():
    """An allow-list entry whose import is gone must be removed."""
    graph = _graph()
    stale = [f"{a} no longer imports {b}" for a, b in ALLOWED if b not in graph.get(a, {})]
    assert not stale, "drop from ALLOWED:\n  " + "\n  ".join(stale)
