"""geo3d.render: textures, vertex colours, files on disk, fallbacks and bad input (issue 14 §1, §3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("open3d_module")

# 4 x 3 texels, every one a different colour (row 0 is the TOP of the image)
TEX = np.array(
    [
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
        [[0, 255, 255], [255, 0, 255], [128, 64, 32], [10, 20, 30]],
        [[200, 100, 50], [50, 100, 200], [90, 90, 90], [255, 255, 255]],
    ],
    dtype=np.uint8,
)


def _quad(uv_scale: float = 1.0):
    """The square [-1, 1]² at z = 0 with UVs (x+1)/2, (y+1)/2 (v up = +y) and TEX."""
    import trimesh
    from PIL import Image

    v = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = (v[:, :2] + 1) / 2 * uv_scale
    m = trimesh.Trimesh(v, f, process=False)
    # diffuse 1: trimesh's GLB export turns it into glTF's baseColorFactor, which multiplies
    # the texture (its default, 0.4, would darken the GLB)
    mat = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(TEX), diffuse=(255, 255, 255, 255))
    m.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    return m


def _front_camera(H: int = 33, W: int = 33, f: float = 24.0, d: float = 2.0):
    """Camera on the -z axis looking at the quad; world +y appears UP in the image."""
    from geo3d.render import intrinsics_matrix, look_at

    K = intrinsics_matrix(f, cx=(W - 1) / 2, cy=(H - 1) / 2)
    T = look_at([0.0, 0.0, -d], [0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])
    return K, T


def _pixel_of(x: float, y: float, K, T):
    from geo3d.render import project_points

    uv, _ = project_points(torch.tensor([[x, y, 0.0]], dtype=torch.float64), K, T)
    return uv[0].tolist()


class TestTextureSampling:
    def test_texel_centres_return_the_texel_colour(self):
        from geo3d.render import sample_texture

        h, w = TEX.shape[:2]
        i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        uv = np.stack([(j.ravel() + 0.5) / w, 1 - (i.ravel() + 0.5) / h], axis=1)
        got = sample_texture(TEX, uv)
        np.testing.assert_allclose(got, TEX.reshape(-1, 3) / 255.0, atol=1e-12)
        # repeat wrap: +1 / -2 in u and v fall on the same texels
        np.testing.assert_allclose(sample_texture(TEX, uv + np.array([1.0, -2.0])), got, atol=1e-9)

    def test_bilinear_between_texels(self):
        from geo3d.render import sample_texture

        h, w = TEX.shape[:2]
        # halfway between texels [0, 0] and [0, 1]; a quarter of the way down to row 1
        uv = np.array([[1.0 / w, 1 - 0.5 / h], [0.5 / w, 1 - 0.75 / h]])
        got = sample_texture(TEX, uv)
        t = TEX.astype(np.float64) / 255
        np.testing.assert_allclose(got[0], (t[0, 0] + t[0, 1]) / 2, atol=1e-12)
        np.testing.assert_allclose(got[1], 0.75 * t[0, 0] + 0.25 * t[1, 0], atol=1e-12)

    def test_rendered_uv_texture_shows_texel_colours_at_known_uvs(self):
        """Pixels whose surface point has the UV of a texel centre show that texel
        (face-on under the head light: shading factor 1). Bug caught: v not flipped,
        u/v swapped, barycentric weights on the wrong vertices."""
        from geo3d.render import render

        K, T = _front_camera()
        out = render(_quad(), K, T, (33, 33), dtype=torch.float64)
        h, w = TEX.shape[:2]
        checked = 0
        for i in range(h):
            for j in range(w):
                u, v = (j + 0.5) / w, 1 - (i + 0.5) / h
                x, y = 2 * u - 1, 2 * v - 1
                pu, pv = _pixel_of(x, y, K, T)
                if abs(pu - round(pu)) < 1e-9 and abs(pv - round(pv)) < 1e-9:
                    got = out["rgb"][round(pv), round(pu)].numpy()
                    np.testing.assert_allclose(got, TEX[i, j] / 255.0, atol=1e-5)
                    checked += 1
        assert checked == h * w  # the camera puts every texel centre on a pixel centre

    def test_vertex_colours_are_barycentric(self):
        import trimesh

        from geo3d.render import render

        v = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
        cols = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m = trimesh.Trimesh(v, [[0, 1, 2]], vertex_colors=(cols * 255).astype(np.uint8), process=False)
        K, T = _front_camera()
        out = render(m, K, T, (33, 33), dtype=torch.float64)
        mask = out["mask"].numpy()
        P = out["points"].numpy()[mask][:, :2]
        # barycentric coordinates of the hit points, from a 2D linear solve
        A = np.array([[v[0, 0], v[1, 0], v[2, 0]], [v[0, 1], v[1, 1], v[2, 1]], [1.0, 1.0, 1.0]])
        w = np.linalg.solve(A, np.concatenate([P.T, np.ones((1, len(P)))])).T
        np.testing.assert_allclose(out["rgb"].numpy()[mask], w @ cols, atol=1e-5)
        assert mask.sum() > 150


class TestFilesAndFallbacks:
    def test_textured_obj_and_glb_files_render_like_the_mesh(self, tmp_path):
        """Real input: a textured mesh saved by trimesh (OBJ + MTL + PNG, and GLB) loads
        with its texture."""
        from geo3d.render import render

        K, T = _front_camera()
        ref = render(_quad(), K, T, (33, 33))
        for name in ("quad.obj", "quad.glb"):
            path = tmp_path / name.split(".")[1] / name
            path.parent.mkdir()
            _quad().export(path)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no fallback warning for a complete file
                got = render(path, K, T, (33, 33))
            torch.testing.assert_close(got["mask"], ref["mask"])
            torch.testing.assert_close(got["rgb"], ref["rgb"], atol=2e-3, rtol=0)

    def test_multi_part_glb_keeps_each_parts_texture(self, tmp_path):
        """Objaverse-style GLB: several geometries, each with its own texture image."""
        import trimesh

        from geo3d.render import render

        left, right = _quad(), _quad()
        left.apply_scale(0.5)
        left.apply_translation((-0.5, 0.0, 0.0))
        right.apply_scale(0.5)
        right.apply_translation((0.5, 0.0, 0.0))
        from PIL import Image

        flipped = TEX[::-1, ::-1].copy()  # another image for the right part
        right.visual.material = trimesh.visual.material.SimpleMaterial(
            image=Image.fromarray(flipped), diffuse=(255, 255, 255, 255)
        )
        path = tmp_path / "two.glb"
        trimesh.Scene([left, right]).export(path)
        K, T = _front_camera()
        out = render(path, K, T, (33, 33), dtype=torch.float64)
        h, w = TEX.shape[:2]
        for tex, x0 in ((TEX, -0.5), (flipped, 0.5)):
            # centre texel of row 1, column 1 of each part's own image
            u, v = 1.5 / w, 1 - 1.5 / h
            pu, pv = _pixel_of(x0 + (2 * u - 1) * 0.5, (2 * v - 1) * 0.5, K, T)
            got = out["rgb"][round(pv), round(pu)].numpy()
            # the pixel centre is within a texel of the centre: compare to the bilinear value
            from geo3d.render import sample_texture

            X = out["points"][round(pv), round(pu)].numpy()
            uv = np.array([[((X[0] - x0) / 0.5 + 1) / 2, (X[1] / 0.5 + 1) / 2]])
            np.testing.assert_allclose(got, sample_texture(tex, uv)[0], atol=2e-3)

    def test_missing_texture_falls_back_with_one_warning(self, tmp_path):
        from geo3d.render import render

        path = tmp_path / "quad.obj"
        _quad().export(path)
        pngs = list(tmp_path.glob("*.png"))
        assert pngs
        for p in pngs:
            p.unlink()
        K, T = _front_camera()
        with pytest.warns(UserWarning, match="texture") as rec:
            out = render(path, K, T, (33, 33))
        assert len([w for w in rec if "texture" in str(w.message)]) == 1
        rgb = out["rgb"][out["mask"]]
        assert torch.allclose(rgb, rgb[0].expand_as(rgb))  # one uniform colour

    def test_untextured_mesh_is_grey_without_warning(self):
        import trimesh

        from geo3d.render import DEFAULT_GREY, render

        K, T = _front_camera()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = render(trimesh.creation.box(extents=(1, 1, 1)), K, T, (33, 33), dtype=torch.float64)
        # face-on front face: shade 1
        np.testing.assert_allclose(out["rgb"][16, 16].numpy(), DEFAULT_GREY, atol=1e-6)


    def test_nan_uvs_fall_back_to_the_material_colour_with_one_warning(self):
        """Issue: all-NaN UVs rendered NaN colours. Documented fallback: material colour."""
        from geo3d.render import render

        m = _quad()
        m.visual = m.visual.copy()
        m.visual.uv = np.full((4, 2), np.nan)
        K, T = _front_camera()
        with pytest.warns(UserWarning, match="uv") as rec:
            out = render(m, K, T, (33, 33), dtype=torch.float64)
        assert len(rec) == 1
        rgb = out["rgb"][out["mask"]]
        assert out["mask"].sum() > 100
        assert torch.isfinite(out["rgb"]).all()
        # face-on quad under the head light: shade 1, colour = the material's main colour
        main = np.asarray(m.visual.material.main_color[:3], dtype=np.float64) / 255.0
        np.testing.assert_allclose(out["rgb"][16, 16].numpy(), main, atol=1e-6)
        assert torch.allclose(rgb, rgb[0].expand_as(rgb))

    def test_partly_nan_uvs_also_fall_back(self):
        from geo3d.render import as_render_mesh

        m = _quad()
        uv = np.asarray(m.visual.uv).copy()
        uv[2, 1] = np.inf
        m.visual.uv = uv
        with pytest.warns(UserWarning, match="uv: expected finite texture coordinates, got 1 of 4"):
            rm = as_render_mesh(m)
        assert [p.kind for p in rm.parts] == ["uniform"]

    def test_sample_texture_rejects_nan_uv(self):
        from geo3d.render import sample_texture

        with pytest.raises(ValueError, match="uv"):
            sample_texture(TEX, np.array([[0.5, np.nan]]))

    def test_missing_mtl_warns_once(self, tmp_path):
        """Issue: an OBJ whose mtllib file is missing rendered grey without any warning."""
        from geo3d.render import DEFAULT_GREY, render

        obj = "mtllib gone.mtl\nv -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nusemtl m0\nf 1 2 3\nf 1 3 4\n"
        (tmp_path / "q.obj").write_text(obj)
        # with UVs too: one warning (the .mtl), not a second "texture missing" one
        (tmp_path / "t.obj").write_text(obj.replace("usemtl", "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nusemtl")
                                        .replace("f 1 2 3\nf 1 3 4", "f 1/1 2/2 3/3\nf 1/1 3/3 4/4"))
        K, T = _front_camera()
        for name in ("q.obj", "t.obj"):
            with pytest.warns(UserWarning) as rec:
                out = render(tmp_path / name, K, T, (33, 33), dtype=torch.float64)
            msgs = [str(w.message) for w in rec]
            assert len(msgs) == 1 and "gone.mtl" in msgs[0] and name in msgs[0], msgs
            assert torch.isfinite(out["rgb"]).all()
            if name == "q.obj":  # no UVs, no materials: the documented grey, face-on shade 1
                np.testing.assert_allclose(out["rgb"][16, 16].numpy(), DEFAULT_GREY, atol=1e-6)
        # an mtllib that exists: no warning
        (tmp_path / "gone.mtl").write_text("newmtl m0\nKd 1 0 0\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            render(tmp_path / "q.obj", K, T, (33, 33))


class TestBadInput:
    def test_mesh_errors_name_the_argument(self):
        import trimesh

        from geo3d.render import Renderer, as_render_mesh, render

        K, T = _front_camera()
        with pytest.raises(ValueError, match="mesh"):
            Renderer(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64)))
        v = np.array([[0.0, 0.0, 0.0], [1.0, np.nan, 0.0], [0.0, 1.0, 0.0]])
        with pytest.raises(ValueError, match="mesh"):
            render(trimesh.Trimesh(v, [[0, 1, 2]], process=False), K, T, (8, 8))
        with pytest.raises(ValueError, match="mesh"):
            as_render_mesh(np.zeros((3, 3)), np.array([[0, 1, 5]]))  # index out of range
        with pytest.raises(ValueError, match="mesh"):
            Renderer("/nonexistent/file.obj")
        with pytest.raises(ValueError, match="background"):
            Renderer(_quad(), background=(0.0, float("nan"), 0.0))
        with pytest.raises(ValueError, match="ambient"):
            Renderer(_quad(), ambient=float("nan"))
        with pytest.raises(ValueError, match="vertex_colors"):
            as_render_mesh(_quad(), vertex_colors=np.full((4, 3), np.nan))
        with pytest.raises(ValueError, match="color_fn"):
            render(as_render_mesh(_quad(), color_fn=lambda p: np.full((len(p), 3), np.nan)), K, T, (8, 8))

    def test_camera_errors_name_the_argument(self):
        from geo3d.render import Renderer, intrinsics_matrix

        r = Renderer(_quad())
        K, T = _front_camera()
        bad = K.clone()
        bad[0, 0] = 0.0
        with pytest.raises(ValueError, match="K"):
            r.render(bad, T, (8, 8))
        bad = K.clone()
        bad[1, 1] = -3.0
        with pytest.raises(ValueError, match="K"):
            r.render(bad, T, (8, 8))
        with pytest.raises(ValueError, match="fx"):
            intrinsics_matrix(-1.0)
        with pytest.raises(ValueError, match="world_to_cam"):
            r.render(K, 2 * T, (8, 8))  # not rigid
        bad = T.clone()
        bad[3, 0], bad[3, 3] = 1.0, 5.0  # rotation block fine, bottom row not [0, 0, 0, 1]
        with pytest.raises(ValueError, match="world_to_cam: .*bottom row"):
            r.render(K, bad, (8, 8))
        refl = T @ torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=T.dtype))
        with pytest.raises(ValueError, match="world_to_cam: .*determinant"):
            r.render(K, refl, (8, 8))
        with pytest.raises(ValueError, match="world_to_cam"):
            r.render(K, T[:2], (8, 8))
        with pytest.raises(ValueError, match="size"):
            r.render(K, T, (0, 8))
        with pytest.raises(ValueError, match="size"):
            r.render(K, T, 8)

    def test_batch_shapes(self):
        from geo3d.render import Renderer, look_at

        r = Renderer(_quad())
        K, T = _front_camera()
        out = r.render(K, torch.zeros(0, 4, 4, dtype=torch.float64), (8, 8))
        assert out["depth"].shape == (0, 8, 8) and out["empty"].shape == (0,)
        assert r.render(K.expand(3, 3, 3), T, (8, 8))["depth"].shape == (3, 8, 8)
        with pytest.raises(ValueError, match="K"):
            r.render(K.expand(3, 3, 3), look_at(torch.tensor([[0.0, 0.0, -2.0]] * 2)), (8, 8))

    def test_camera_looking_away_gives_an_empty_flagged_view(self):
        from geo3d.render import Renderer, look_at

        K, T = _front_camera()
        away = look_at([0.0, 0.0, -2.0], [0.0, 0.0, -5.0], up=[0.0, 1.0, 0.0])
        out = Renderer(_quad()).render(K, torch.stack([T, away]), (16, 16))
        assert out["empty"].tolist() == [False, True]
        assert not out["mask"][1].any() and (out["depth"][1] == 0).all() and (out["rgb"][1] == 0).all()
