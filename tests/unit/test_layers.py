"""The package's shape: each layer imports only those below it, no import cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "cloudckpt"

#: layer -> the layers (and top-level modules) it may import from cloudckpt; "" is the
#: package root, the public API, which only the thin top layers may use
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "format": {"errors", "_version", "format"},
    "storage": {"errors", "_version", "format", "storage"},
    "engine": {"errors", "_version", "format", "storage", "engine"},
    "manager": {"errors", "_version", "format", "storage", "engine", "manager"},
    "dcp": {"errors", "_version", "format", "storage", "engine", "manager"},
    "testing": {"errors", "_version", "format", "storage", "engine", "testing"},
    "cli": {"", "errors", "_version", "format", "storage", "engine", "manager", "dcp", "cli",
            "integrations", "testing", "demo"},
    "integrations": {"", "errors", "_version", "format", "storage", "engine", "manager",
                     "integrations"},
    "demo": {"", "errors", "_version", "format", "storage", "engine", "manager", "testing"},
}
MAX_LINES = 420


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """cloudckpt modules imported by ``path`` (module level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cloudckpt":  # the public API (the package root)
                out.add("cloudckpt")
            elif node.module.startswith("cloudckpt."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "cloudckpt")
    return out


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if "." in m))
def test_each_layer_imports_only_layers_below(module: str) -> None:
    layer = _layer(module)
    allowed = ALLOWED.get(layer)
    if allowed is None:  # the package root and __main__ are the public surface
        return
    bad = sorted(i for i in _imports(MODULES[module]) if _layer(i) not in allowed)
    assert not bad, f"{module} ({layer}/) imports {bad}"


def test_format_is_pure() -> None:
    for module, path in MODULES.items():
        if _layer(module) == "format":
            text = path.read_text()
            for banned in ("import fsspec", "open(", "requests", "boto"):
                assert banned not in text, f"{module} does I/O ({banned!r})"


def test_no_import_cycles_among_modules() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = set()
        for imp in _imports(path):
            # `from cloudckpt.x import name` may name a submodule or an attribute
            deps.add(imp if imp in MODULES else imp.rsplit(".", 1)[0])
        # a package's __init__ re-exporting its own submodules is not a cycle
        graph[module] = {d for d in deps if d in MODULES and d != module
                         and not d.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d):], d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small(module: str) -> None:
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (limit {MAX_LINES})"


def test_every_error_is_exported_from_the_package_root() -> None:
    import cloudckpt
    from cloudckpt import errors

    missing = [n for n, v in vars(errors).items()
               if isinstance(v, type) and issubclass(v, Exception) and not hasattr(cloudckpt, n)]
    assert not missing, f"errors not importable from cloudckpt: {missing}"
    assert callable(cloudckpt.verify) and callable(cloudckpt.inspect)
