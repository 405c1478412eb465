"""`render_object` leaves object folders with the usual permissions (umask), not the 0700
of the temporary folder it renders into (found by the multiview_corr demo: drwx------)."""

from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.usefixtures("open3d_module")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_object_folder_mode_follows_umask(tmp_path, umask):
    import trimesh
    from geo3d.datasets.multiview_render import RenderSettings, render_object

    old = os.umask(umask)
    try:
        render_object(trimesh.creation.box(), tmp_path / "obj",
                      RenderSettings(size=16, focal=18.0, level=0))
        # a plain mkdir under the same umask is the independent reference
        os.mkdir(tmp_path / "ref")
        (tmp_path / "ref.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "obj").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "ref").stat().st_mode)
    assert mode == 0o777 & ~umask
    ref_file = stat.S_IMODE((tmp_path / "ref.txt").stat().st_mode)
    for f in sorted((tmp_path / "obj").iterdir()):  # every file as a plain open() would make it
        assert stat.S_IMODE(f.stat().st_mode) == ref_file, f.name
