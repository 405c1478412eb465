"""geo3d.body sits below datasets/nn/render/apps: it may import only geo3d.rotations, ops,
groups (and itself); open3d/anny/matplotlib are imported inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import geo3d.body

# geo3d._atomic and geo3d._validation are the bottom-most private helpers (no geo3d imports)
ALLOWED = ("geo3d.body", "geo3d.rotations", "geo3d.ops", "geo3d.groups", "geo3d._atomic",
           "geo3d._validation")
LAZY = {"open3d", "anny", "matplotlib", "mpl_toolkits", "trimesh"}


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node, node.module


def test_body_imports_only_lower_layers():
    root = Path(geo3d.body.__file__).parent
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node, name in _imports(tree):
            if name.startswith("geo3d") and not name.startswith(ALLOWED):
                # the CLI module may call the console entry point when run as a script
                assert path.name == "_cli.py" and name == "geo3d.cli", f"{path.name} imports {name}"
            if name.split(".")[0] in LAZY:
                assert id(node) not in top_level, f"{path.name} imports {name} at module level"
