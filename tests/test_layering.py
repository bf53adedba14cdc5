"""Layers point one way: no module imports from a layer above its own.

    errors, core, registry, io, ops, parallel → config, phases → data, losses, models, metrics, postprocess
    → methods → engine → bench, demo, api → cli

Every module under ``src/semiseg`` is parsed with ``ast``; every ``import`` counts, at top level or
inside a function (a lazy import is still a dependency), including ``TYPE_CHECKING`` blocks.
Imports within one layer are allowed. A new top-level module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "semiseg"

#: top-level module or package of semiseg → layer (lower = more basic)
LAYERS = {
    "__init__": 0,
    "errors": 0,
    "core": 0,
    "registry": 0,
    "io": 0,
    "ops": 0,
    "parallel": 0,
    "config": 1,
    "phases": 1,  # Phase / OptimizerSpec: declared by methods and by regularisers (losses)
    "data": 2,
    "losses": 2,
    "models": 2,
    "metrics": 2,
    "postprocess": 2,
    "methods": 3,
    "engine": 4,
    "bench": 5,
    "demo": 5,
    "api": 5,  # the Python API (semiseg/__init__ re-exports it lazily, as a facade)
    "cli": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every semiseg module ``path`` imports (relative imports resolved);
    ``source`` = its code, if not read from ``path``."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = (
        module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    )
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # ``from . import x``: x may be a module
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names] if not node.module else []
                out.append((node.lineno, target))
            elif node.module:
                out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m == "semiseg" or m.startswith("semiseg.")]


def layer_of(module: str) -> tuple[str, int | None]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return top, LAYERS.get(top)


MODULES = sorted(SRC.rglob("*.py"))


def test_every_top_level_module_has_a_layer():
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in MODULES}
    tops.discard("configs")
    missing = sorted(tops - set(LAYERS))
    assert not missing, f"give these modules a layer in tests/test_layering.py: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_upward_imports(path):
    top, layer = layer_of(module_name(path))
    upward = []
    for line, target in imported_modules(path):
        target_top, target_layer = layer_of(target)
        if target_layer is not None and layer is not None and target_layer > layer:
            upward.append(f"line {line}: {target} ({target_top}, layer {target_layer})")
    assert not upward, f"{path.relative_to(SRC)} ({top}, layer {layer}) imports from above: " + "; ".join(
        upward
    )


def test_the_checker_sees_lazy_and_relative_imports():
    code = (
        "import semiseg.cli\n"
        "def f():\n    from semiseg.engine.evaluate import predict_slices\n"
        "from ..methods import base\nfrom . import views\nimport numpy\n"
    )
    found = [m for _, m in imported_modules(SRC / "data" / "probe.py", code)]
    assert found == ["semiseg.cli", "semiseg.methods", "semiseg.data.views", "semiseg.data",
                     "semiseg.engine.evaluate"]  # fmt: skip
    assert [layer_of(m)[1] for m in found] == [6, 3, 2, 2, 4]
