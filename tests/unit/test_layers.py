"""The package's folders are its layers, and imports only point down: the cloud API (alb) and plain data (model)
know nothing of the cluster, the engine or the gate; the process at the top wires them. metrics.py and the
package's __init__ (its version) are leaves every layer may use."""

from __future__ import annotations

import ast
from pathlib import Path

import alb_membership

ROOT = Path(alb_membership.__file__).parent
LAYERS = ["alb", "model", "cluster", "engine", "gate"]
LEAVES = {"alb_membership", "alb_membership.metrics"}
TOP = len(LAYERS)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return TOP


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alb_membership"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if (ROOT / a.name).is_dir())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("alb_membership"))
    return found


def test_imports_only_point_down() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("alb_membership", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for imported in imports(path):
            if imported not in LEAVES and layer(imported) > layer(module):
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_every_module_is_in_a_layer_or_at_the_top() -> None:
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert top == ["__init__", "__main__", "cli", "handlers", "metrics", "oneshot", "run", "runtime", "settings"]
