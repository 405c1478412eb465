"""geo3d.render cameras: look-at, viewpoints, projection (issue 14 §1). No open3d needed."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from geo3d.render import (
    camera_centers,
    depth_to_points,
    icosphere_viewpoints,
    intrinsics_matrix,
    look_at,
    project_points,
    random_viewpoints,
    relative_rotation_angle,
)


class TestLookAt:
    def test_axes_centre_target_and_up(self, generator):
        eyes = torch.randn(50, 3, generator=generator, dtype=torch.float64) * 3
        targets = torch.randn(50, 3, generator=generator, dtype=torch.float64) * 0.2
        T = look_at(eyes, targets)
        R = T[:, :3, :3]
        torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))
        torch.testing.assert_close(camera_centers(T), eyes)
        K = intrinsics_matrix(100.0, cx=40.0, cy=30.0)
        uv, z = project_points(targets[:, None], K, T)
        torch.testing.assert_close(uv[:, 0], torch.tensor([40.0, 30.0], dtype=torch.float64).expand(50, 2))
        torch.testing.assert_close(z[:, 0], (targets - eyes).norm(dim=1))
        # world up (+z) appears up in the image: a point above the target has a smaller row
        uv_up, _ = project_points((targets + torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64))[:, None], K, T)
        assert (uv_up[:, 0, 1] < 30.0).all()

    def test_degenerate_up_is_handled(self):
        T = look_at([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]])  # looking along ∓z with up = z
        assert torch.isfinite(T).all()
        R = T[:, :3, :3]
        torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
        torch.testing.assert_close(camera_centers(T), torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]], dtype=torch.float64))

    def test_rotation_equivariance_float64(self, generator):
        """look_at(R e, R t, R u) = look_at(e, t, u) ∘ R⁻¹ for random R (and ties e ≈ t + up)."""
        from geo3d.rotations import random_rotation_matrix

        R = random_rotation_matrix(20, generator=generator, dtype=torch.float64)
        e = torch.randn(20, 3, generator=generator, dtype=torch.float64) * 1e3  # large coordinates
        t = torch.randn(20, 3, generator=generator, dtype=torch.float64)
        up = torch.randn(20, 3, generator=generator, dtype=torch.float64)
        A = look_at(e, t, up)
        B = look_at((R @ e[..., None])[..., 0], (R @ t[..., None])[..., 0], (R @ up[..., None])[..., 0])
        G = torch.zeros(20, 4, 4, dtype=torch.float64)
        G[:, :3, :3] = R
        G[:, 3, 3] = 1
        torch.testing.assert_close(B @ G, A, atol=1e-9, rtol=1e-9)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="target"):
            look_at([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match="up"):
            look_at([1.0, 2.0, 3.0], up=[0.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="eye"):
            look_at([1.0, 2.0])
        with pytest.raises(ValueError, match="eye"):
            look_at([math.nan, 0.0, 1.0])


class TestViewpoints:
    @pytest.mark.parametrize("level,count", [(0, 12), (1, 42), (2, 162)])
    def test_icosphere_counts_radius_and_uniform_spacing(self, level, count):
        v = icosphere_viewpoints(level, radius=2.0)
        assert v.shape == (count, 3)
        torch.testing.assert_close(v.norm(dim=1), torch.full((count,), 2.0, dtype=torch.float64))
        d = torch.cdist(v, v) + torch.eye(count, dtype=torch.float64) * 10
        nn = d.min(dim=1).values
        assert float(nn.min()) > 0.1  # distinct
        if level == 0:  # icosahedron: all edges equal, 4 / sqrt(10 + 2 sqrt 5) on the unit sphere
            torch.testing.assert_close(nn, torch.full((12,), 2 * 4 / math.sqrt(10 + 2 * math.sqrt(5)), dtype=torch.float64))
        # geodesic sphere: nearest neighbours within 20% of each other
        assert float(nn.max() / nn.min()) < 1.2
        # symmetric under the antipodal map (as the icosahedron)
        torch.testing.assert_close(torch.cdist(-v, v).min(dim=1).values, torch.zeros(count, dtype=torch.float64), atol=1e-6, rtol=0)  # cdist rounding

    def test_random_viewpoints_generator(self):
        a = random_viewpoints(1000, 3.0, generator=torch.Generator().manual_seed(4))
        b = random_viewpoints(1000, 3.0, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a.norm(dim=1), torch.full((1000,), 3.0, dtype=torch.float64))
        # uniform on the sphere: mean ~ 0 and E[z²] = r² / 3 (5 sigma bounds)
        assert float(a.mean(0).abs().max()) < 5 * 3.0 / math.sqrt(3 * 1000)
        assert abs(float((a[:, 2] ** 2).mean()) - 3.0) < 5 * 9 * math.sqrt(4 / 45 / 1000)
        with pytest.raises(ValueError, match="radius"):
            random_viewpoints(3, -1.0)
        with pytest.raises(ValueError, match="level"):
            icosphere_viewpoints(-1)


class TestProjection:
    def test_depth_to_points_inverts_projection(self, generator):
        K = intrinsics_matrix(70.0, 65.0, cx=20.3, cy=14.8)
        T = look_at([1.0, -2.0, 0.5])
        depth = 1 + torch.rand(30, 40, generator=generator, dtype=torch.float64)
        P = depth_to_points(depth, K, T)
        uv, z = project_points(P.reshape(-1, 3), K, T)
        v, u = torch.meshgrid(torch.arange(30.0, dtype=torch.float64), torch.arange(40.0, dtype=torch.float64), indexing="ij")
        torch.testing.assert_close(uv, torch.stack([u, v], -1).reshape(-1, 2))
        torch.testing.assert_close(z, depth.reshape(-1))

    def test_relative_rotation_angle_matches_scipy(self, generator):
        from scipy.spatial.transform import Rotation

        from geo3d.rotations import random_rotation_matrix

        A = torch.eye(4, dtype=torch.float64).repeat(30, 1, 1)
        B = A.clone()
        A[:, :3, :3] = random_rotation_matrix(30, generator=generator, dtype=torch.float64)
        B[:, :3, :3] = random_rotation_matrix(30, generator=generator, dtype=torch.float64)
        ref = np.degrees(Rotation.from_matrix((A[:, :3, :3] @ B[:, :3, :3].transpose(1, 2)).numpy()).magnitude())
        np.testing.assert_allclose(relative_rotation_angle(A, B).numpy(), ref, atol=1e-5)


def test_import_is_light_and_respects_layers():
    """geo3d.render imports neither open3d (lazy) nor layers above it (nn, datasets, apps)."""
    code = (
        "import sys, geo3d.render; "
        "bad = [m for m in ('open3d', 'geo3d.nn', 'geo3d.datasets', 'geo3d.apps') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class TestCheckPose:
    """Issue: non-rigid 4x4 poses (bottom row not [0, 0, 0, 1]) and reflections rendered."""

    def _pose(self):
        return look_at([0.0, 0.0, -3.0], [0.0, 0.0, 0.0])

    def test_bottom_row_must_be_0001(self):
        from geo3d.render._camera import check_pose

        T = self._pose()
        bad = T.clone()
        bad[3, 0], bad[3, 3] = 1.0, 5.0
        with pytest.raises(ValueError, match=r"world_to_cam: .*bottom row \[0, 0, 0, 1\]"):
            check_pose(bad)
        only_scale = T.clone()
        only_scale[3, 3] = 2.0  # homogeneous scale: still not a rigid transform
        with pytest.raises(ValueError, match="bottom row"):
            check_pose(torch.stack([T, only_scale]), "poses")
        # 3x4 input is completed with the exact bottom row; a valid pose passes unchanged
        torch.testing.assert_close(check_pose(T[:3]), T)
        torch.testing.assert_close(check_pose(T), T)

    def test_reflection_message_names_the_determinant(self):
        from geo3d.render._camera import check_pose

        refl = self._pose() @ torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
        assert float(torch.linalg.det(refl[:3, :3])) == pytest.approx(-1.0)
        with pytest.raises(ValueError, match=r"world_to_cam_a: .*determinant"):
            check_pose(refl, "world_to_cam_a")

    def test_every_pose_consumer_rejects_a_non_rigid_pose(self):
        bad = self._pose().clone()
        bad[3, 0], bad[3, 3] = 1.0, 5.0
        K = intrinsics_matrix(30.0, cx=16.0, cy=16.0)
        pts = torch.zeros(1, 3, dtype=torch.float64)
        with pytest.raises(ValueError, match="world_to_cam"):
            project_points(pts, K, bad)
        with pytest.raises(ValueError, match="world_to_cam"):
            camera_centers(bad)
        with pytest.raises(ValueError, match="world_to_cam"):
            depth_to_points(torch.ones(4, 4, dtype=torch.float64), K, bad)
        with pytest.raises(ValueError, match="world_to_cam_b"):
            relative_rotation_angle(self._pose(), bad)
