"""The import graph of ``railcar``: data flows one way, no cycles, no imports hidden inside functions.

Layers (``railcar/__init__.py``): ``core`` at the bottom imports nothing else from Railcar; ``rails`` (judgment)
imports ``core``; ``streams`` (events) imports ``core`` and ``rails``' catalog; ``sidecar`` (transport) imports
``core`` only; ``tools`` and ``webhook`` sit above the rooms; ``settings``, ``commands`` and ``cli`` are the
composition root. The test reads every module's source with :mod:`ast` (every ``import`` statement, at any depth).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "railcar"

# group -> the groups it may import from (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "rails": {"core", "codecs"},
    "streams": {"core", "rails", "codecs"},
    "sidecar": {"core", "codecs"},
    "codecs": {"core"},
    "tools": {"core", "rails", "streams", "sidecar", "codecs"},
    "webhook": {"core", "sidecar"},
    "settings": {"core", "rails", "streams", "sidecar", "codecs"},
    "commands": {"core", "rails", "streams", "sidecar", "tools", "settings", "webhook", "codecs"},
    "cli": {"core", "settings", "commands"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """``(imported railcar module, inside a function)`` for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_func) for a in child.names if a.name.startswith("railcar"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package (an __init__ is its own)
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = package[: len(package) - (child.level - 1)]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                if name.startswith("railcar"):
                    found.append((name, in_func))
            visit(child, nested)

    visit(tree, False)
    return found


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module: str) -> None:
    group = _group(module)
    for target, _ in _imports(MODULES[module], module):
        tgroup = _group(target)
        if target == "railcar" or tgroup == group:
            continue
        assert tgroup in ALLOWED[group], f"{module} imports {target}: {group} may not import {tgroup}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_imports_of_railcar(module: str) -> None:
    hidden = [t for t, in_func in _imports(MODULES[module], module) if in_func]
    assert not hidden, f"{module} imports {hidden} inside a function (an import cycle in disguise?)"


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _ in _imports(p, m) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's own __init__ is imported by its submodules implicitly; only explicit edges count
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_the_walk_sees_the_package() -> None:
    # guards the test itself: the rooms are there and their imports are read
    assert {"railcar.core.guard", "railcar.sidecar.app", "railcar.rails.guard", "railcar.streams.recorder"} <= set(MODULES)
    assert ("railcar.core.guard", False) in [(t, f) for t, f in _imports(MODULES["railcar.sidecar.app"], "railcar.sidecar.app")]
