"""Imports go one way through the pipeline: a module imports only modules of its own layer or of lower layers
(module-level and function-level imports alike), so there are no import circles between the packages."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_ext"
# lowest first; the top-level helper modules (errors, paths, plotting, introspection) sit at the bottom
LAYERS = (("errors", "paths", "plotting", "introspection", "__init__"), ("metrics",), ("data",), ("conversion",),
          ("architectures",), ("planners",), ("trainers",), ("inference",), ("evaluation",),
          ("cli", "demo", "workflows"))
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str:
    """``nnunet_ext.data.metadata`` -> ``data``; ``nnunet_ext.paths`` -> ``paths``."""
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_ext"):
            names = [node.module] if node.module != "nnunet_ext" else [f"nnunet_ext.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("nnunet_ext.")]
    return out


def test_every_package_has_a_layer():
    found = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert found - set(RANK) == set(), "give the new module or package a layer in LAYERS"


def test_imports_only_go_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        if "discovery" in rel.parts:  # nnU-Net's trainer search path: re-exports the trainers package
            continue
        here = RANK[_layer(module)]
        for line, imported in _imports(path):
            if RANK[_layer(imported)] > here:
                upward.append(f"{module}:{line} imports {imported}")
    assert upward == []


def test_the_product_patches_nothing_at_run_time():
    """No ``unittest.mock`` in the package: nnU-Net's and torch's objects are extended through the trainer's hooks
    (``get_dataloaders``, ``save_checkpoint``, ``load_checkpoint``), never swapped while the product runs."""
    users = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
             if any(name.startswith("unittest") for _, name in _all_imports(p))]
    assert users == []


def _all_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out
