"""geo3d.render: geometry of the rendered maps against independent sources (issue 14 §1).

Independent sources: trimesh's closest-point queries and ray tests (its own triangle
intersection code, not Embree), analytic silhouettes and intersections, scipy rotations.
Images are small (32-64 px) to keep the default suite fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("open3d_module")


def _scene_mesh():
    """A non-convex mesh with self-occlusion: a box with a smaller box on top, and a torus."""
    import trimesh

    a = trimesh.creation.box(extents=(0.8, 0.6, 0.4))
    b = trimesh.creation.box(extents=(0.3, 0.3, 0.5))
    b.apply_translation((0.15, 0.0, 0.4))
    t = trimesh.creation.torus(0.25, 0.07, major_sections=24, minor_sections=12)
    t.apply_translation((-0.3, 0.25, 0.35))
    return trimesh.util.concatenate([a, b, t])


def _cameras(n: int, seed: int, radius: float = 2.2):
    from geo3d.render import look_at, random_viewpoints

    g = torch.Generator().manual_seed(seed)
    eyes = random_viewpoints(n, radius, generator=g)
    return look_at(eyes)


def _K(H: int, W: int):
    from geo3d.render import intrinsics_matrix

    # fx != fy and an off-centre principal point catch swapped axes
    return intrinsics_matrix(1.15 * W, 1.05 * H, cx=0.47 * W, cy=0.53 * H)


class TestDepthAndPoints:
    def test_backprojected_depth_lies_on_the_mesh(self):
        """Bug caught: ray length used as z-depth, K⁻¹ transposed, half-pixel offsets."""
        import trimesh

        from geo3d.render import Renderer, depth_to_points

        mesh = _scene_mesh()
        H, W = 40, 48
        K = _K(H, W)
        T = _cameras(3, seed=1)
        out = Renderer(mesh).render(K, T, (H, W))
        assert out["points"].dtype == torch.float64
        total = 0
        for i in range(3):
            m = out["mask"][i]
            assert 100 < int(m.sum()) < H * W  # the object is in view and not filling it
            P = depth_to_points(out["depth"][i], K, T[i])[m].numpy()[::2]  # every other pixel
            _, dist, _ = trimesh.proximity.closest_point(mesh, P)
            assert dist.max() < 1e-5, dist.max()
            total += len(P)
        assert total > 400

    def test_points_agree_with_depth_and_normals_with_the_mesh(self):
        """Bug caught: points in the camera frame, depth of another pixel, wrong face normals."""
        import trimesh

        from geo3d.render import Renderer, depth_to_points

        mesh = _scene_mesh()
        H, W = 32, 36
        K = _K(H, W)
        T = _cameras(2, seed=2)
        out = Renderer(mesh).render(K, T, (H, W))
        for i in range(2):
            m = out["mask"][i]
            P = depth_to_points(out["depth"][i], K, T[i])
            torch.testing.assert_close(out["points"][i][m], P[m], atol=1e-6, rtol=0)
            assert (out["points"][i][~m] == 0).all() and (out["depth"][i][~m] == 0).all()
            # normal = normal of the triangle trimesh finds closest to the point
            pts = out["points"][i][m].numpy()[::3]
            _, _, tri = trimesh.proximity.closest_point(mesh, pts)
            n_ref = mesh.face_normals[tri]
            cos = (out["normals"][i][m].numpy()[::3] * n_ref).sum(-1)
            assert np.mean(cos > 1 - 1e-6) > 0.97  # edges can pick the other face

    def test_cube_face_on_has_the_analytic_silhouette(self):
        """A unit cube seen face-on: the mask is exactly the pixels whose ray meets the
        front face. Bug caught: swapped H/W or fx/fy, cx/cy, pixel-centre conventions."""
        import trimesh

        from geo3d.render import intrinsics_matrix, look_at, render

        H, W = 45, 64
        fx, fy, cx, cy = 61.3, 47.9, 30.2, 23.7
        d = 3.0  # camera at distance d from the centre, front face at depth d - 0.5
        K = intrinsics_matrix(fx, fy, cx=cx, cy=cy)
        T = look_at([0.0, 0.0, -d], [0.0, 0.0, 0.0], up=[0.0, -1.0, 0.0])
        out = render(trimesh.creation.box(extents=(1.0, 1.0, 1.0)), K, T, (H, W), dtype=torch.float64)
        u = np.arange(W)
        v = np.arange(H)
        # camera x = world x, camera y = world y here (up = -y world appears up)
        inside_u = np.abs((u - cx) / fx * (d - 0.5)) < 0.5
        inside_v = np.abs((v - cy) / fy * (d - 0.5)) < 0.5
        expected = inside_v[:, None] & inside_u[None, :]
        assert 0 < expected.sum() < H * W and not expected.all(axis=0).any()
        np.testing.assert_array_equal(out["mask"].numpy(), expected)
        np.testing.assert_allclose(out["depth"].numpy()[expected], d - 0.5, atol=1e-6)
        # head light on a face-on face: full shading of the grey default albedo
        np.testing.assert_allclose(out["rgb"].numpy()[expected], 0.7, atol=1e-6)
        np.testing.assert_allclose(out["normals"].numpy()[expected], [[0.0, 0.0, -1.0]] * int(expected.sum()), atol=1e-12)

    def test_batch_equals_single_views_and_float32(self):
        from geo3d.render import Renderer

        r = Renderer(_scene_mesh())
        K = _K(24, 24)
        T = _cameras(4, seed=3)
        batch = r.render(K, T, (24, 24), rays_per_call=1000)  # several Embree calls
        for i in range(4):
            one = r.render(K, T[i], (24, 24))
            for k in ("rgb", "depth", "mask", "points", "normals"):
                torch.testing.assert_close(batch[k][i], one[k], atol=0, rtol=0)
        f32 = r.render(K, T.float(), (24, 24))
        assert f32["depth"].dtype == torch.float32
        # float32 poses differ from the float64 ones by rounding: depth moves by ~1e-6
        torch.testing.assert_close(f32["depth"], batch["depth"].float(), atol=1e-5, rtol=0)


class TestEquivariance:
    def test_moving_the_mesh_and_the_camera_together_changes_nothing(self, generator):
        """SE(3) equivariance, float64: rendering g·mesh from T g⁻¹ gives the same image,
        depth and mask, with points and normals moved by g. Bug caught: points or normals
        returned in the camera frame, shading tied to the world frame, a pose applied twice."""
        import trimesh

        from geo3d.render import Renderer
        from geo3d.rotations import random_rotation_matrix

        mesh = _scene_mesh()
        mesh.visual.face_colors = np.random.default_rng(0).integers(0, 256, size=(len(mesh.faces), 4), dtype=np.uint8)
        H = W = 40
        K = _K(H, W)
        T = _cameras(2, seed=7)
        ref = Renderer(mesh).render(K, T, (H, W))
        R = random_rotation_matrix(3, generator=generator, dtype=torch.float64)
        shifts = torch.tensor([[0.3, -0.2, 0.1], [5.0, 3.0, -4.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
        for g_R, g_t in zip(R, shifts, strict=True):
            G = torch.eye(4, dtype=torch.float64)
            G[:3, :3], G[:3, 3] = g_R, g_t
            moved = trimesh.Trimesh(mesh.vertices @ g_R.numpy().T + g_t.numpy(), mesh.faces,
                                    face_colors=mesh.visual.face_colors, process=False)
            out = Renderer(moved).render(K, T @ torch.linalg.inv(G), (H, W))
            both = ref["mask"] & out["mask"]
            # Embree casts in float32: a silhouette pixel may flip, nothing more
            assert int((ref["mask"] ^ out["mask"]).sum()) <= 2
            torch.testing.assert_close(out["depth"][both], ref["depth"][both], atol=1e-5, rtol=0)
            torch.testing.assert_close(out["points"][both], ref["points"][both] @ g_R.T + g_t, atol=1e-5, rtol=0)
            torch.testing.assert_close(out["normals"][both], ref["normals"][both] @ g_R.T, atol=1e-9, rtol=0)
            # colours: equal except where a pixel hits the other face at a shared edge
            same = (out["rgb"][both] - ref["rgb"][both]).abs().amax(dim=-1) < 1e-9
            assert float(same.float().mean()) > 0.98


class TestCorrespondences:
    def test_two_views_are_mutually_consistent_with_visibility(self):
        """a -> b -> a lands back on the start pixel; a match exists iff the point is
        visible in b, decided independently by trimesh ray tests."""
        from geo3d.render import Renderer, camera_centers, project_points, view_correspondences

        mesh = _scene_mesh()
        H = W = 48
        K = _K(H, W)
        from geo3d.render import look_at

        T = look_at(torch.tensor([[2.0, -1.0, 1.2], [1.0, 1.9, 1.0]], dtype=torch.float64))
        out = Renderer(mesh).render(K, T, (H, W))
        pa, pb, ok = view_correspondences(out["depth"][0], K, T[0], out["depth"][1], K, T[1], threshold=0.1)
        assert int(ok.sum()) > 100 and int((~ok).sum()) > 20  # overlap and occlusions
        # cycle consistency: b -> a of the matched pixels returns to the start
        qa, qb, ok2 = view_correspondences(out["depth"][1], K, T[1], out["depth"][0], K, T[0], pb[ok], threshold=0.1)
        assert ok2.float().mean() > 0.9
        err = (qb[ok2] - pa[ok][ok2]).abs().amax(dim=1)
        # rounding to pixels twice on slanted surfaces: up to the threshold (~2 px) apart
        assert int(err.max()) <= 2 and float(err.float().mean()) < 0.75
        # visibility in b by trimesh's own ray intersector
        X = out["points"][0][pa[:, 1], pa[:, 0]].numpy()
        C = camera_centers(T[1]).numpy()
        dirs = X - C
        dist = np.linalg.norm(dirs, axis=1)
        dirs /= dist[:, None]
        locs, ray_idx, _ = mesh.ray.intersects_location(np.repeat(C[None], len(X), 0), dirs, multiple_hits=False)
        first = np.full(len(X), np.inf)
        first[ray_idx] = np.linalg.norm(locs - C, axis=1)
        uv, z = project_points(torch.from_numpy(X), K, T[1])
        in_img = ((uv.round() >= 0) & (uv.round() < torch.tensor([W, H]))).all(1).numpy()
        # visible up to the match tolerance: nothing more than `threshold` in front of X
        visible = (first > dist - 0.1) & in_img
        okn = ok.numpy()
        # a match is never an occluded point, except where the occluder is thinner than a
        # pixel: then the pixel centre q misses it, and a pixel next to q sees it (in front)
        db = out["depth"][1].numpy()
        for k in np.nonzero(okn & ~visible)[0]:
            qu, qv = pb[k].tolist()
            nb = db[max(qv - 1, 0) : qv + 2, max(qu - 1, 0) : qu + 2]
            assert ((nb > 0) & (nb < float(z[k]) - 0.1)).any(), (k, dist[k] - first[k])
        assert (okn & ~visible).mean() < 0.02
        # visible points are matched, but for 1-px rounding at silhouettes (~10% at 48 px)
        assert (okn[visible]).mean() > 0.85

    def test_threshold_and_bad_input(self):
        from geo3d.render import intrinsics_matrix, look_at, view_correspondences

        K = intrinsics_matrix(8.0, cx=2.0, cy=2.0)
        T = look_at([0.0, 0.0, -2.0], up=[0.0, -1.0, 0.0])
        d = torch.full((5, 5), 2.0, dtype=torch.float64)
        d2 = d + 0.05  # the wall moved 5 cm back in view b
        assert not view_correspondences(d, K, T, d2, K, T, threshold=0.01)[2].any()
        assert view_correspondences(d, K, T, d2, K, T, threshold=0.1)[2].all()
        with pytest.raises(ValueError, match="pixels_a"):
            view_correspondences(d, K, T, d, K, T, torch.tensor([[5, 0]]))
        with pytest.raises(ValueError, match="threshold"):
            view_correspondences(d, K, T, d, K, T, threshold=0.0)
