"""Quaternion algebra, slerp and distances against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import geo3d.rotations as G

TOL = 1e-10


def test_multiply_conjugate_apply(random_quats, all_quats, sp):
    p, q = random_quats[:200], all_quats[:200]
    pq = G.quat_multiply(p, q)
    ref = (sp.from_quat(p) * sp.from_quat(q)).as_matrix()  # q first, then p
    assert np.abs(G.quat_to_matrix(pq).numpy() - ref).max() < TOL
    assert (G.quat_to_matrix(G.quat_conjugate(q)) - G.quat_to_matrix(q).mT).abs().max() < TOL
    ident = G.quat_multiply(q, G.quat_conjugate(q))
    assert (ident - torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)).abs().max() < 1e-14
    g = torch.Generator().manual_seed(0)
    v = torch.randn(200, 3, generator=g, dtype=torch.float64)
    assert np.abs(G.quat_apply(q, v).numpy() - sp.from_quat(q).apply(v.numpy())).max() < TOL
    # non-unit quaternions are normalised, broadcasting over batch dims
    out = G.quat_apply(3.0 * q[:5, None], v[None, :7])
    assert out.shape == (5, 7, 3)
    ref = (G.quat_to_matrix(q[:5, None]) @ v[None, :7, :, None]).squeeze(-1)
    assert (out - ref).abs().max() < TOL


def test_slerp_matches_scipy(random_quats, sp):
    from scipy.spatial.transform import Slerp

    q0, q1 = random_quats[:50], random_quats[50:100]
    # include near-identical and near-antipodal pairs
    q1 = q1.clone()
    q1[0] = q0[0]
    q1[1] = -q0[1]
    q1[2] = q0[2] + 1e-9
    q1[2] = q1[2] / q1[2].norm()
    ts = torch.tensor([0.0, 0.1, 0.5, 0.77, 1.0], dtype=torch.float64)
    for i in range(len(q0)):
        key = sp.R.from_quat(torch.stack((q0[i], q1[i]))[:, [1, 2, 3, 0]].numpy())
        ref = Slerp([0.0, 1.0], key)(ts.numpy()).as_matrix()
        out = G.quat_to_matrix(G.quat_slerp(q0[i], q1[i], ts))
        assert np.abs(out.numpy() - ref).max() < TOL
    # batched t broadcasting and endpoints
    out = G.quat_slerp(q0, q1, torch.zeros(len(q0), dtype=torch.float64))
    assert torch.minimum((out - q0).abs().amax(-1), (out + q0).abs().amax(-1)).max() < 1e-14
    out = G.quat_slerp(q0[:, None], q1[:, None], ts)
    assert out.shape == (50, 5, 4) and (out[..., 0] >= 0).all()
    # constant angular speed
    d = G.quat_distance(q0[:, None], out)
    full = G.quat_distance(q0, q1)
    assert (d - full[:, None] * ts).abs().max() < 1e-12


def test_distances_match_scipy(all_quats, random_quats, sp):
    q1 = all_quats
    q2 = random_quats[torch.arange(len(q1)) % len(random_quats)]
    r1, r2 = sp.from_quat(q1), sp.from_quat(q2)
    ref = (r1.inv() * r2).magnitude()
    assert np.abs(G.quat_distance(q1, q2).numpy() - ref).max() < TOL
    assert np.abs(G.quat_distance(q1, -q2).numpy() - ref).max() < TOL
    R1 = torch.from_numpy(r1.as_matrix())
    R2 = torch.from_numpy(r2.as_matrix())
    assert np.abs(G.geodesic_distance(R1, R2).numpy() - ref).max() < TOL
    # hard cases relative to the identity: angles near 0 and π to machine precision
    eye = torch.eye(3, dtype=torch.float64).expand_as(R1)
    ref0 = r1.magnitude()
    assert np.abs(G.geodesic_distance(eye, R1).numpy() - ref0).max() < TOL
    ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    assert np.abs(G.quat_distance(ident, q1).numpy() - ref0).max() < TOL
    # tiny angles are resolved (not rounded to 0 as an acos would)
    small = G.axis_angle_to_matrix(torch.tensor([[1e-9, 0.0, 0.0]], dtype=torch.float64))
    assert abs(G.geodesic_distance(eye[:1], small).item() - 1e-9) < 1e-18


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distance_is_invariant(dtype):
    g = torch.Generator().manual_seed(4)
    A, B, C = (G.random_rotation_matrix(30, generator=g, dtype=dtype) for _ in range(3))
    d = G.geodesic_distance(A, B)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert (G.geodesic_distance(C @ A, C @ B) - d).abs().max() < tol
    assert (G.geodesic_distance(A @ C, B @ C) - d).abs().max() < tol
    assert (G.geodesic_distance(B, A) - d).abs().max() < tol
    assert ((d >= 0) & (d <= math.pi)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_geodesic_distance_fast_and_precise_formulas_agree(dtype, monkeypatch):
    # the eager path mixes 2 asin(|R2 - R1| / 2√2) with the atan2 formula for angles
    # within a few degrees of π: across that switch (and under broadcasting) it must
    # agree with the atan2 formula everywhere, and stay differentiable
    from geo3d.rotations import _procrustes
    from geo3d.rotations._procrustes import _geodesic_precise

    monkeypatch.setattr(_procrustes, "_FAST_MIN_NUMEL", 0)  # small batches skip the switch
    g = torch.Generator().manual_seed(11)
    axes = torch.nn.functional.normalize(torch.randn(8, 3, generator=g, dtype=torch.float64), dim=-1)
    gaps = torch.tensor([0.0, 1e-8, 1e-4, 0.01, 0.0199, 0.0201, 0.2, 2.0], dtype=torch.float64)
    angles = math.pi - gaps
    R = G.axis_angle_to_matrix(axes * angles[:, None]).to(dtype)
    R = torch.cat([R, G.random_rotation_matrix(64, generator=g, dtype=dtype)])
    eye = torch.eye(3, dtype=dtype)
    d = G.geodesic_distance(eye, R)  # broadcast (3, 3) against (N, 3, 3)
    ref = _geodesic_precise(eye.expand_as(R), R)
    # the asin formula turns an error δ in |R2 - R1| into δ / (√2 cos(θ/2)) <= ~70δ where
    # it is used, δ a few ε
    tol = 400 * torch.finfo(dtype).eps
    assert (d - ref).abs().max() < tol
    assert (d[:8].double() - angles).abs().max() < (1e-5 if dtype == torch.float32 else 1e-12)
    A = G.random_rotation_matrix(72, generator=g, dtype=dtype)
    d2 = G.geodesic_distance(A, A @ R)
    # (products carry a few more ε of non-orthogonality, hence 2 tol)
    assert (d2 - _geodesic_precise(A, A @ R)).abs().max() < 2 * tol
    if dtype == torch.float64:
        x = R.clone().requires_grad_(True)
        G.geodesic_distance(eye, x).sum().backward()
        assert torch.isfinite(x.grad).all()
        # (not at gaps below gradcheck's step: |x| is not smooth at 0 either)
        m = R[4:72].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda m: G.geodesic_distance(eye, m), (m,))


def test_geodesic_distance_fast_path_rejects_non_finite(monkeypatch):
    from geo3d.rotations import _procrustes

    monkeypatch.setattr(_procrustes, "_FAST_MIN_NUMEL", 0)
    R = G.random_rotation_matrix(4, generator=torch.Generator().manual_seed(0))
    bad = R.clone()
    bad[2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"R1, R2: expected finite"):
        G.geodesic_distance(R, bad)
    bad[2, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"R1, R2: expected finite"):
        G.geodesic_distance(bad, R)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_tiny_and_huge_quaternions_in_float32_are_not_zero(scale):
    """|q| = 1e-30 or 1e30 in float32: the squared norm under/overflows (1e-60, 1e60), so a
    norm-squared test calls them zero/inf. Every quaternion reader rescales first; values
    against scipy's Rotation.from_quat of the float64 unit quaternion."""
    from scipy.spatial.transform import Rotation as _R

    u = torch.tensor([[0.5, -0.1, 0.7, 0.3], [1.0, 0.0, 0.0, 0.0], [-0.1, 0.0, 0.0, 2.0]])
    q = u * scale  # exact in float32 up to rounding of the scale
    ref = _R.from_quat(u.double().numpy()[:, [1, 2, 3, 0]])
    v = torch.tensor([0.3, -1.0, 2.0])
    checks = {
        "quat_to_matrix": (G.quat_to_matrix(q, normalize=True), ref.as_matrix()),
        "quat_to_axis_angle": (G.quat_to_axis_angle(q), ref.as_rotvec()),
        "quat_apply": (G.quat_apply(q, v), ref.apply(v.double().numpy())),
        "quat_distance": (G.quat_distance(q, u), 0.0 * ref.magnitude()),
        "quat_slerp(t=1)": (
            G.quat_to_matrix(G.quat_slerp(u, q, 1.0)),
            ref.as_matrix(),
        ),
    }
    qn = G.quat_normalize(q)
    unit = ref.as_quat()[:, [3, 0, 1, 2]]
    unit = unit * np.sign(unit[:, :1])  # w >= 0
    checks["quat_normalize"] = (qn, unit)
    checks["quat_to_euler"] = (G.quat_to_euler(q, "ZYX"), ref.as_euler("ZYX"))
    for name, (got, want) in checks.items():
        assert torch.isfinite(got).all(), name
        err = (got.double() - torch.as_tensor(want)).abs().max()
        assert err < 1e-6, (name, err)
    # exactly zero stays an error naming the argument
    with pytest.raises(ValueError, match="q: expected finite quaternions with non-zero"):
        G.quat_to_matrix(torch.zeros(4), normalize=True)
    with pytest.raises(ValueError, match="q1: expected finite quaternions with non-zero"):
        G.quat_distance(torch.zeros(4), q[0])
    with pytest.raises(ValueError, match="q: expected finite quaternions with non-zero"):
        G.quat_to_euler(torch.zeros(4), "xyz")  # was silently the angles (0, -π/2, 0)


@pytest.mark.parametrize("s1, s2", [(1e-30, 1e-30), (1e30, 1e30), (1e-30, 1e30)])
def test_sixd_tiny_and_huge_columns_in_float32(s1, s2):
    """Same kind in the 6D map: squared column norms under/overflow in float32 for
    |c| = 1e-30 / 1e30; reference: float64 Gram-Schmidt (numpy) of the unscaled columns."""
    c1 = np.array([1.0, 0.2, 0.1])
    c2 = np.array([0.3, 1.0, -0.4])
    b1 = c1 / np.linalg.norm(c1)
    b2 = c2 - b1 @ c2 * b1
    b2 /= np.linalg.norm(b2)
    ref = np.stack([b1, b2, np.cross(b1, b2)], axis=-1)
    x = torch.tensor(np.concatenate([c1 * s1, c2 * s2]), dtype=torch.float32)
    assert (G.sixd_to_matrix(x).double() - torch.from_numpy(ref)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="x: expected finite 6D vectors with non-zero first"):
        G.sixd_to_matrix(torch.cat([torch.zeros(3), x[3:]]))
    with pytest.raises(ValueError, match="x: expected c2 not parallel to c1"):
        G.sixd_to_matrix(torch.cat([x[:3], torch.zeros(3)]))
