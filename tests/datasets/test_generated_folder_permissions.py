"""Generated object folders get the mode a plain ``mkdir`` would give them (umask), not the
0700 of ``tempfile.mkdtemp`` they are built in (found in the multiview renderer; the
fracture generator built its object folders the same way)."""

from __future__ import annotations

import os
import stat

import pytest
import trimesh
from geo3d.datasets import fracture

from geo3d._atomic import staging_dir


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_staging_dir_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        d = staging_dir(tmp_path, ".tmp-x-")
        os.mkdir(tmp_path / "ref")  # the independent reference: a plain mkdir
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == stat.S_IMODE((tmp_path / "ref").stat().st_mode)
    assert d.parent == tmp_path and d.name.startswith(".tmp-x-")


def test_fracture_object_folders_follow_umask(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.obj")
    old = os.umask(0o022)
    try:
        summary = fracture.generate_dataset(
            tmp_path / "bb", meshes=[tmp_path / "box.obj"], min_parts=2, max_parts=2, seed=0,
            fractures_per_object=1, val_fraction=0.0, progress=False)
        os.mkdir(tmp_path / "ref")
    finally:
        os.umask(old)
    assert not summary["failed"]
    ref = stat.S_IMODE((tmp_path / "ref").stat().st_mode)
    folders = [p for p in (tmp_path / "bb").rglob("*") if p.is_dir()]
    assert any(p.name == "fractured_0" for p in folders)
    for p in folders:
        assert stat.S_IMODE(p.stat().st_mode) == ref, p
