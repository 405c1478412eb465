"""Multiview datasets: `geo3d data render` layout, resume/atomicity, textured objects, and
the MultiviewPairs loader with 3D correspondences (issue 14 §2, §3)."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("open3d_module")

SMALL = dict(size=40, focal=44.0, level=0)  # 12 views of 40 x 40: fast


def _settings(**kw):
    from geo3d.datasets.multiview_render import RenderSettings

    return RenderSettings(**{**SMALL, **kw})


def _textured_box():
    """A box with UVs (per-face unwrap by trimesh) and a 4x4 colour texture."""
    import trimesh
    from PIL import Image

    box = trimesh.creation.box(extents=(0.6, 0.4, 0.3))
    box = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(12, 3), process=False)
    rng = np.random.default_rng(0)
    uv = rng.uniform(0.05, 0.95, size=(36, 2))
    tex = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    mat = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(tex), diffuse=(255, 255, 255, 255))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    return box


def _mesh_dir(tmp_path: Path) -> Path:
    """A folder with a textured OBJ (nested), a vertex-coloured PLY and a GLB."""
    import trimesh

    d = tmp_path / "meshes"
    (d / "000-001").mkdir(parents=True)
    _textured_box().export(d / "000-001" / "tex_box.obj")
    s = trimesh.creation.icosphere(subdivisions=2, radius=3.0)  # normalised to unit extent
    s.visual.vertex_colors = (np.abs(s.vertices / 3.0) * 255).astype(np.uint8)
    s.export(d / "ball.ply")
    trimesh.creation.cylinder(radius=0.2, height=1.0).export(d / "rod.glb")
    return d


def _png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the PNG IHDR chunk."""
    data = path.read_bytes()[:33]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


class TestRenderDataset:
    def test_reference_layout_and_values(self, tmp_path):
        from geo3d.datasets.multiview import load_view
        from geo3d.datasets.multiview_render import render_dataset

        from geo3d.render import Renderer, as_render_mesh, icosphere_viewpoints, look_at

        out = tmp_path / "out"
        summary = render_dataset(out, mesh_dir=_mesh_dir(tmp_path), settings=_settings(), progress=False)
        assert summary["failed"] == [] and summary["objects"] == 3
        names = (out / "objects.txt").read_text().split()
        assert sorted(names) == ["000-001/tex_box", "ball", "rod"]
        d = out / "000-001" / "tex_box"
        for k in ("color", "depth", "mask"):
            assert sorted(p.name for p in d.glob(f"{k}_*.png")) == [f"{k}_{i:06d}.png" for i in range(12)]
        assert _png_header(d / "depth_000003.png") == (40, 40, 16, 0)  # 16-bit grey
        assert _png_header(d / "color_000003.png") == (40, 40, 8, 2)  # 8-bit RGB
        assert _png_header(d / "mask_000003.png") == (40, 40, 8, 0)
        poses = np.load(d / "poses.npy")
        K = np.load(d / "intrinsics.npy")
        np.testing.assert_allclose(K, [[44.0, 0, 20.0], [0, 44.0, 20.0], [0, 0, 1]])
        np.testing.assert_allclose(poses, look_at(icosphere_viewpoints(0, 2.0)).numpy())
        meta = json.loads((d / "meta.json").read_text())
        assert (d / "complete.json").is_file() and meta["empty_views"] == []
        # values: depth in mm within 0.5 mm of an in-memory render of the normalised mesh
        rm = as_render_mesh(d.parents[2] / "meshes" / "000-001" / "tex_box.obj")
        rm.vertices = (rm.vertices - np.array(meta["centre"])) * meta["scale"]
        ref = Renderer(rm).render(torch.from_numpy(K), torch.from_numpy(poses[3]), (40, 40), dtype=torch.float64)
        v = load_view(d, 3)
        np.testing.assert_array_equal(v["mask"], ref["mask"].numpy())
        np.testing.assert_allclose(v["depth"], ref["depth"].numpy(), atol=5e-4 + 1e-9)
        np.testing.assert_allclose(v["rgb"] / 255.0, ref["rgb"].numpy(), atol=0.5 / 255 + 1e-9)
        assert (v["rgb"][~v["mask"]] == 0).all()  # black background
        # normalised like the reference: the 0.6 x 0.4 x 0.3 box becomes 1 x 2/3 x 1/2, centred,
        # so no surface point is nearer than 2 - its half diagonal
        half_diag = np.linalg.norm([0.5, 1 / 3, 1 / 4])
        assert v["depth"][v["mask"]].min() >= 2 - half_diag - 1e-3 and v["depth"].max() <= 2 + half_diag

    def test_deterministic_and_resumable(self, tmp_path):
        from geo3d.datasets.multiview_render import render_dataset

        s = _settings(views="random", num_views=3)
        a = render_dataset(tmp_path / "a", num_synthetic=2, settings=s, seed=5, progress=False)
        b = render_dataset(tmp_path / "b", num_synthetic=2, settings=s, seed=5, progress=False)
        assert a["rendered"] == b["rendered"] == 2
        for name in ("synthetic/Bottle_00000", "synthetic/Bowl_00001"):
            for f in ("color_000002.png", "depth_000001.png", "poses.npy"):
                assert (tmp_path / "a" / name / f).read_bytes() == (tmp_path / "b" / name / f).read_bytes()
        # another seed: other random viewpoints
        p5 = np.load(tmp_path / "a" / "synthetic/Bottle_00000/poses.npy")
        from geo3d.datasets.multiview_render import _object_seed

        p6 = _settings(views="random", num_views=3).poses(_object_seed(6, 0))
        assert np.abs(p5 - p6).max() > 0.1
        # resume: finished objects are skipped; an unfinished one (no marker) is redone;
        # stale temporary folders of an interrupted run are removed
        obj = tmp_path / "a" / "synthetic/Bowl_00001"
        (obj / "complete.json").unlink()
        stale = tmp_path / "a" / "synthetic" / ".tmp-Bowl_00001-xyz"
        stale.mkdir()
        r = render_dataset(tmp_path / "a", num_synthetic=2, settings=s, seed=5, progress=False)
        assert (r["rendered"], r["skipped"]) == (1, 1)
        assert (obj / "complete.json").is_file() and not stale.exists()
        assert (obj / "color_000002.png").read_bytes() == (tmp_path / "b" / "synthetic/Bowl_00001/color_000002.png").read_bytes()

    @pytest.mark.slow
    def test_workers_do_not_change_the_result(self, tmp_path):
        from geo3d.datasets.multiview_render import render_dataset

        s = _settings(views="random", num_views=3)
        render_dataset(tmp_path / "a", num_synthetic=3, settings=s, seed=5, progress=False)
        render_dataset(tmp_path / "b", num_synthetic=3, settings=s, seed=5, workers=2, progress=False)
        for f in sorted((tmp_path / "a").rglob("*.png")):
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()

    def test_bad_meshes_fail_alone_and_write_nothing(self, tmp_path):
        from geo3d.datasets.multiview_render import render_dataset

        d = _mesh_dir(tmp_path)
        (d / "nan.obj").write_text("v 0 0 0\nv 1 nan 0\nv 0 1 0\nf 1 2 3\n")
        (d / "nofaces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
        out = tmp_path / "out"
        summary = render_dataset(out, mesh_dir=d, settings=_settings(), progress=False)
        assert len(summary["failed"]) == 2 and summary["objects"] == 3
        assert any("nan" in m and "mesh" in m for m in summary["failed"])
        assert any("nofaces" in m and "mesh" in m for m in summary["failed"])
        assert not (out / "nan").exists() and not (out / "nofaces").exists()
        assert not list(out.rglob(".tmp-*"))
        assert "nan" not in (out / "objects.txt").read_text().split()

    def test_settings_errors_name_the_argument(self, tmp_path):
        from geo3d.datasets.multiview_render import render_dataset

        with pytest.raises(ValueError, match="focal"):
            render_dataset(tmp_path / "x", num_synthetic=1, settings=_settings(focal=0.0), progress=False)
        with pytest.raises(ValueError, match="mesh_dir"):
            render_dataset(tmp_path / "x", mesh_dir=tmp_path / "missing", settings=_settings(), progress=False)
        assert not (tmp_path / "x").exists()  # nothing written

    def test_camera_looking_away_is_flagged_in_meta(self, tmp_path):
        import trimesh
        from geo3d.datasets.multiview_render import render_object

        # principal point far outside the image: every camera looks past the object
        with pytest.warns(UserWarning, match="empty mask"):
            meta = render_object(trimesh.creation.box(), tmp_path / "obj", _settings(principal=-500.0))
        assert meta["empty_views"] == list(range(12))


class TestTexturedObjects:
    def test_solid_texture_is_seeded_and_varied(self):
        from geo3d.datasets.multiview_render import SolidTexture, make_textured_shape

        m1, t1 = make_textured_shape("Mug", 3)
        m2, t2 = make_textured_shape("Mug", 3)
        np.testing.assert_array_equal(m1.vertices, m2.vertices)
        p = np.random.default_rng(0).uniform(-0.5, 0.5, size=(4000, 3))
        np.testing.assert_array_equal(t1(p), t2(p))
        assert np.abs(SolidTexture(4)(p) - t1(p)).max() > 0.3
        c = t1(p)
        assert c.min() >= 0 and c.max() <= 1
        # appearance identifies surface points: many distinct colours, not a few flat ones
        assert len(np.unique(np.round(c, 2), axis=0)) > 1000


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two procedural textured objects, 42 views of 48 x 48."""
    from geo3d.datasets.multiview_render import render_dataset

    root = tmp_path_factory.mktemp("mv")
    render_dataset(root, num_synthetic=2, categories=["Mug", "Chair"],
                   settings=_settings(size=48, focal=53.0, level=1), progress=False)
    return root


class TestMultiviewPairs:

    def test_items_pairs_filter_and_correspondences(self, root):
        from geo3d.datasets.multiview import MultiviewPairs
        ds = MultiviewPairs(root, num_points=256, pairs_per_object=3, threshold=0.06)
        assert len(ds) == 6
        # the reference's filter, brute force: all (i, j), i != j, angle <= 120
        poses, _ = ds.object_cameras(ds.objects[0])
        from scipy.spatial.transform import Rotation

        R = poses[:, :3, :3]
        rel = np.einsum("iab,jcb->ijac", R, R).reshape(-1, 3, 3)  # R_i R_jᵀ
        ang = np.degrees(Rotation.from_matrix(rel).magnitude()).reshape(42, 42)
        # 120° ties exist (icosphere): kept, whatever the last bit of rounding says
        brute = {(i, j) for i in range(42) for j in range(42) if i != j and ang[i, j] <= 120.0 + 1e-6}
        assert (np.abs(ang - 120.0) < 1e-6).sum() > 0
        assert {tuple(p) for p in ds.valid_pairs(ds.objects[0]).tolist()} == brute
        assert 0 < len(brute) < 42 * 41  # some pairs are rejected
        for k in range(len(ds)):
            it = ds[k]
            assert it["angle"] <= 120.0 + 1e-6 and it["views"][0] != it["views"][1]
            assert it["image1"].shape == (3, 48, 48) and it["pixels1"].shape == (256, 2)
            assert it["mask1"][it["pixels1"][:, 1], it["pixels1"][:, 0]].all()  # foreground samples
            ok = it["corr_valid"]
            assert ok.sum() > 20
            # the matched pixel's 3D point (from depth 2) is within the threshold of point 1
            from geo3d.render import depth_to_points

            P2 = depth_to_points(it["depth2"].double(), it["K"].double(), it["pose2"].double())
            q = it["corr2"][ok]
            d = (P2[q[:, 1], q[:, 0]] - it["points1"][ok].double()).norm(dim=1)
            assert float(d.max()) < 0.06
            assert (it["corr2"][~ok] == -1).all()
        a, b = ds[2], MultiviewPairs(root, num_points=256, pairs_per_object=3, threshold=0.06)[2]
        assert torch.equal(a["pixels1"], b["pixels1"]) and torch.equal(a["views"], b["views"])

    def test_reads_the_reference_layout_with_shared_poses(self, root, tmp_path):
        """Reference layout: only colour/depth/mask PNGs per object (2-level names), poses
        in one shared .npy, K the fixed reference matrix scaled here to the image."""
        import shutil

        from geo3d.datasets.multiview import MultiviewPairs

        src = root / "synthetic" / "Mug_00000"
        ref = tmp_path / "renderings" / "000-151" / "abc123"
        ref.mkdir(parents=True)
        for p in src.glob("*.png"):
            shutil.copy(p, ref / p.name)
        np.save(tmp_path / "obj_poses.npy", np.load(src / "poses.npy"))
        ds = MultiviewPairs(tmp_path / "renderings", poses=tmp_path / "obj_poses.npy",
                            intrinsics=np.load(src / "intrinsics.npy"), num_points=128, threshold=0.06)
        assert ds.objects == ["000-151/abc123"]
        it = ds[0]
        ours = MultiviewPairs(root, objects=["synthetic/Mug_00000"], num_points=128, threshold=0.06)[0]
        assert torch.equal(it["views"], ours["views"]) and torch.equal(it["corr2"], ours["corr2"])
        with pytest.raises(ValueError, match="poses"):
            MultiviewPairs(tmp_path / "renderings")[0]

    def test_preview_figure(self, root, tmp_path):
        from geo3d.datasets.multiview import MultiviewPairs, plot_pair

        path = plot_pair(MultiviewPairs(root, num_points=200, threshold=0.06)[0], tmp_path / "p.png")
        assert _png_header(path)[:2] == (1210, 1210)


def test_cli_render(tmp_path, capsys):
    from geo3d.cli import main

    d = _mesh_dir(tmp_path)
    out = tmp_path / "out"
    code = main(["data", "render", str(d), str(out), "--size", "32", "--focal", "35", "--level", "0",
                 "--no-progress", "--preview", str(tmp_path / "prev.png")])
    assert code == 0
    assert "3 objects (3 rendered" in capsys.readouterr().out
    assert (tmp_path / "prev.png").is_file()
    code = main(["data", "render", str(d), str(tmp_path / "bad"), "--focal", "-1", "--no-progress"])
    assert code == 2 and "focal" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["data", "render", str(tmp_path / "only_out"), "--no-progress"]) == 2
