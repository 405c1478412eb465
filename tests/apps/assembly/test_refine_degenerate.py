"""Refinement on degenerate normal matrices (apps/assembly/_refine.py): a rank-deficient
Gauss-Newton system (all matches on one point, collinear matches, a piece without any
term) must give finite poses, never a singular-solve error, and keep the anchor and the
equivariance. Regression: float32 ``torch.linalg.solve`` raised "input matrix is singular"
on such systems once the LM damping had decayed below float32 resolution (6 of 48 demo
objects)."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.assembly._refine import refine_poses

from geo3d.rotations import random_rotation_matrix

F64 = torch.float64


def _one_point_scene(seed: int, dtype: torch.dtype):
    """Piece 1 matched to the anchor by 16 copies of one point pair (the 6x6 block of
    piece 1 has rank 3); piece 2 far away with no term at all (a zero block)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(3, 32, 3, generator=g).to(dtype)
    T = torch.eye(4, dtype=dtype).repeat(3, 1, 1)
    T[1, :3, 3] = 0.3
    T[2, :3, 3] = 5.0
    z = torch.zeros(16, dtype=torch.long)
    m = {(0, 1): (z, z, torch.full((16,), 1e3, dtype=dtype))}
    return pts, T, m


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("seed", [4, 6])  # float32 seeds that raised before the fix
def test_rank_deficient_system_finite_anchor_fixed(seed, dtype):
    pts, T, m = _one_point_scene(seed, dtype)
    out = refine_poses(pts, T, m, 0, steps=40, w_surface=0.0, w_pen=0.0, w_match=1.0)
    assert bool(out.isfinite().all())
    assert torch.equal(out[0], T[0])  # anchor bit for bit
    # the one matched point lands on its partner (the free directions stay free)
    y1 = pts[1, 0] @ out[1, :3, :3].T + out[1, :3, 3]
    y0 = pts[0, 0]
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert float((y1 - y0).norm()) < tol
    # piece 2 has no term: its increment is exactly zero
    torch.testing.assert_close(out[2], T[2], rtol=0, atol=1e-6 if dtype == torch.float32
                               else 1e-12)


def _collinear_scene():
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(2, 40, 3, generator=g, dtype=F64)
    # the matched points of both pieces lie on one line (rotation about it is free)
    tt = torch.linspace(-1.0, 1.0, 10, dtype=F64)[:, None]
    d = torch.tensor([0.6, -0.3, 0.74], dtype=F64)
    pts[0, :10] = tt * d
    pts[1, :10] = tt * d + torch.tensor([0.2, 0.1, -0.1], dtype=F64)
    T = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    m = {(0, 1): (torch.arange(10), torch.arange(10), torch.ones(10, dtype=F64))}
    return pts, T, m


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_collinear_matches_converge(dtype):
    pts, T, m = _collinear_scene()
    pts, T, m = pts.to(dtype), T.to(dtype), {k: (a, b, w.to(dtype)) for k, (a, b, w) in m.items()}
    out = refine_poses(pts, T, m, 0, steps=40, w_surface=0.0, w_pen=0.0, w_match=1.0)
    assert bool(out.isfinite().all()) and torch.equal(out[0], T[0])
    y1 = pts[1, :10] @ out[1, :3, :3].T + out[1, :3, 3]
    # the shift is (0.2, 0.1, -0.1): the line's points coincide after refinement
    assert float((y1 - pts[0, :10]).norm(dim=-1).max()) < (1e-4 if dtype == torch.float32
                                                            else 1e-9)


def test_degenerate_system_equivariant_float64():
    """Collinear matches (a rank-deficient system): moving input piece 1 (its points and
    initial pose with it) still gives the same placed points, to 1e-9."""
    pts, T, m = _collinear_scene()
    g = torch.Generator().manual_seed(5)
    M = torch.eye(4, dtype=F64)
    M[:3, :3] = random_rotation_matrix(generator=g, dtype=F64)
    M[:3, 3] = torch.tensor([30.0, -12.0, 4.0], dtype=F64)
    p2, T2 = pts.clone(), T.clone()
    p2[1] = pts[1] @ M[:3, :3].T + M[:3, 3]
    T2[1] = T[1] @ torch.linalg.inv(M)
    kw = {"steps": 30, "w_surface": 0.0, "w_pen": 0.0, "w_match": 1.0}
    out1 = refine_poses(pts, T, m, 0, **kw)
    out2 = refine_poses(p2, T2, m, 0, **kw)
    y1 = pts[1] @ out1[1, :3, :3].T + out1[1, :3, 3]
    y2 = p2[1] @ out2[1, :3, :3].T + out2[1, :3, 3]
    assert float((y1 - y2).abs().max()) < 1e-9


def test_zero_damping_never_raises():
    """damping=0 leaves the singular system undamped: every step is rejected, the poses
    come back unchanged instead of an exception."""
    pts, T, m = _one_point_scene(4, torch.float32)
    out = refine_poses(pts, T, m, 0, steps=5, w_surface=0.0, w_pen=0.0, w_match=1.0,
                       damping=0.0)
    assert torch.equal(out, T)
