"""Fixtures for the dataset tests: tiny Breaking-Bad-layout folders built from boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Each object is a box cut into axis-aligned slabs along x; (category, object, cuts) where
# cuts are the x positions of the cuts (len(cuts) + 1 pieces).
OBJECTS = [
    ("Bottle", "obj_a", [0.3]),
    ("Bottle", "obj_b", [-0.2, 0.4]),
    ("Mug", "obj_c", [0.0, 0.5]),
]


def box_pieces(cuts, extents=(2.0, 1.0, 0.6), offset=(0.3, -0.1, 0.2)):
    """Trimesh boxes tiling [-1, 1] x [-.5, .5] x [-.3, .3] (+ offset), cut along x."""
    import trimesh

    xs = [-extents[0] / 2, *cuts, extents[0] / 2]
    pieces = []
    for lo, hi in zip(xs[:-1], xs[1:], strict=True):
        center = np.array([(lo + hi) / 2, 0.0, 0.0]) + np.asarray(offset)
        box = trimesh.creation.box(extents=(hi - lo, extents[1], extents[2]))
        box.apply_translation(center)
        pieces.append(box)
    return pieces


def write_layout(root: Path, objects=OBJECTS, subset="everyday", val=(), modes=True,
                 shift=(0.0, 0.0, 0.0)):
    """Write ROOT/data_split/<subset>.{train,val}.txt and the piece OBJ files (every piece
    translated by ``shift``)."""
    split = {"train": [], "val": []}
    for cat, obj, cuts in objects:
        line = f"{subset}/{cat}/{obj}"
        split["val" if obj in val else "train"].append(line)
        folders = ["fractured_0"] + (["mode_0"] if modes else [])
        for k, folder in enumerate(folders):
            d = root / line / folder
            d.mkdir(parents=True, exist_ok=True)
            pcs = box_pieces(cuts if k == 0 else cuts[:1])
            for i, m in enumerate(pcs):
                m.apply_translation(shift)
                m.export(d / f"piece_{i}.obj")
    (root / "data_split").mkdir(parents=True, exist_ok=True)
    for name, lines in split.items():
        (root / "data_split" / f"{subset}.{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def bb_root(tmp_path: Path) -> Path:
    """A tiny dataset: 3 objects (2-3 pieces), each with fractured_0 and mode_0."""
    return write_layout(tmp_path / "bb")


@pytest.fixture
def layout():
    """The helpers above, for tests (test modules cannot import conftest under importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(OBJECTS=OBJECTS, box_pieces=box_pieces, write_layout=write_layout)
