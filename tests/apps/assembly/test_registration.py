"""open3d FPFH + RANSAC + ICP baseline: recovers a known rigid motion of the same cloud."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from geo3d.rotations import random_rotation_matrix


def _cloud(n: int = 1500) -> np.ndarray:
    a = trimesh.creation.box((0.6, 0.3, 0.2))
    b = trimesh.creation.cylinder(0.08, 0.5)
    b.apply_translation((0.25, 0.1, 0.2))
    m = trimesh.util.concatenate([a, b])
    pts, _ = trimesh.sample.sample_surface(m, n, seed=0)
    return np.asarray(pts)


def test_register_pair_recovers_a_rigid_motion(open3d_module, generator):
    from geo3d.apps.assembly._registration import register_pair

    x = _cloud()
    R = random_rotation_matrix(generator=generator, dtype=torch.float64).numpy()
    t = np.array([0.3, -0.2, 0.1])
    y = x @ R.T + t
    T = register_pair(x, y, seed=0)
    assert np.abs(T[:3, :3] - R).max() < 0.05
    assert np.abs(T[:3, 3] - t).max() < 0.02


def test_registration_baseline_only_two_piece_objects(open3d_module, generator):
    from geo3d.apps.assembly._registration import registration_baseline

    x = torch.as_tensor(_cloud(256))
    pts = torch.zeros(2, 3, 256, 3, dtype=torch.float64)
    pts[0, 0], pts[0, 1] = x - x.mean(0), (x - x.mean(0)) * 0.5
    pts[1] = pts[0]
    valid = torch.tensor([[True, True, False], [True, True, True]])
    rot = random_rotation_matrix(2, 3, generator=generator, dtype=torch.float64)
    trans = torch.randn(2, 3, 3, generator=generator, dtype=torch.float64)
    r, t, used = registration_baseline(pts, valid, rot, trans, torch.tensor([0, 0]))
    assert used.tolist() == [True, False]
    assert torch.equal(r[0, 0], rot[0, 0]) and torch.equal(r[1], rot[1])  # anchor / skipped
    assert r.shape == rot.shape and torch.isfinite(t).all()


def test_register_pair_bad_input(open3d_module):
    from geo3d.apps.assembly._registration import register_pair

    with pytest.raises(ValueError, match="source"):
        register_pair(np.zeros((3, 3)), np.zeros((100, 3)))
