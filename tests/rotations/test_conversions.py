"""Conversions vs scipy (random draws and hard cases), round trips, shapes and dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import geo3d.rotations as G

TOL = 1e-10


def test_quat_to_matrix_matches_scipy(all_quats, sp):
    R = G.quat_to_matrix(all_quats)
    ref = torch.from_numpy(sp.from_quat(all_quats).as_matrix())
    assert (R - ref).abs().max() < TOL


def test_quat_to_matrix_normalises_like_scipy(random_quats, sp):
    g = torch.Generator().manual_seed(0)
    q = random_quats * torch.rand(len(random_quats), 1, generator=g, dtype=torch.float64) * 5
    ref = torch.from_numpy(sp.from_quat(q).as_matrix())
    assert (G.quat_to_matrix(q, normalize=True) - ref).abs().max() < TOL
    # the default path expects unit quaternions: a norm drift of ε gives an O(ε) error
    drift = random_quats * (1 + 1e-7)
    ref = torch.from_numpy(sp.from_quat(random_quats).as_matrix())
    assert (G.quat_to_matrix(drift) - ref).abs().max() < 1e-6


def test_matrix_to_quat_matches_scipy(all_quats, sp, up_to_sign):
    Rn = sp.from_quat(all_quats).as_matrix()
    q = G.matrix_to_quat(torch.from_numpy(Rn))
    ref = sp.as_quat(sp.R.from_matrix(Rn))
    assert up_to_sign(q, ref).max() < TOL
    assert (q[..., 0] >= 0).all()
    assert ((q.norm(dim=-1) - 1).abs() < 1e-14).all()
    # and the input quaternion itself (up to sign), including near w = 0 and at π
    assert up_to_sign(q, all_quats).max() < TOL


def test_matrix_to_quat_sign_is_canonical_away_from_w0(random_quats):
    q = G.random_quat(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert (G.matrix_to_quat(G.quat_to_matrix(-q)) - q).abs().max() < 1e-13


def _angle(v: torch.Tensor) -> torch.Tensor:
    return v.norm(dim=-1)


def test_axis_angle_matches_scipy(all_quats, sp):
    r = sp.from_quat(all_quats)
    ref_v = torch.from_numpy(r.as_rotvec())
    Rm = torch.from_numpy(r.as_matrix())
    v_from_R = G.matrix_to_axis_angle(Rm)
    v_from_q = G.quat_to_axis_angle(all_quats)
    ref_angle = _angle(ref_v)
    for v in (v_from_R, v_from_q):
        assert (_angle(v) <= math.pi + 1e-15).all()
        err = (v - ref_v).abs().amax(-1)
        # At exactly π, v and -v are the same rotation: only there may the sign differ.
        at_pi = (ref_angle - math.pi).abs() < 1e-12
        err_pi = torch.minimum(err, (v + ref_v).abs().amax(-1))
        assert torch.where(at_pi, err_pi, err).max() < TOL
    # forward direction
    assert (G.axis_angle_to_matrix(ref_v) - Rm).abs().max() < TOL
    q = G.axis_angle_to_quat(ref_v)
    ref_q = sp.as_quat(sp.R.from_rotvec(ref_v.numpy()))
    ref_q = torch.where(ref_q[..., :1] < 0, -ref_q, ref_q)
    assert (q[..., 0] >= 0).all()
    assert torch.minimum((q - ref_q).abs().amax(-1), (q + ref_q).abs().amax(-1)).max() < TOL
    assert ((q - ref_q).abs().amax(-1) * (ref_q[..., 0] > 1e-6)).max() < TOL


def test_axis_angle_large_angles_match_scipy(sp):
    g = torch.Generator().manual_seed(5)
    v = torch.randn(300, 3, generator=g, dtype=torch.float64) * 6.0  # angles up to ~30 rad
    ref = torch.from_numpy(sp.R.from_rotvec(v.numpy()).as_matrix())
    assert (G.axis_angle_to_matrix(v) - ref).abs().max() < TOL
    assert (G.quat_to_matrix(G.axis_angle_to_quat(v)) - ref).abs().max() < TOL
    # Taylor / exact branch boundary
    t = torch.tensor([1e-2, 0.0316, 0.03163, 0.0317, 0.1], dtype=torch.float64)
    v = t[:, None] * torch.tensor([[0.6, 0.0, 0.8]], dtype=torch.float64)
    ref = torch.from_numpy(sp.R.from_rotvec(v.numpy()).as_matrix())
    assert (G.axis_angle_to_matrix(v) - ref).abs().max() < 1e-14


def test_sixd(all_quats, sp):
    Rm = torch.from_numpy(sp.from_quat(all_quats).as_matrix())
    x = G.matrix_to_sixd(Rm)
    assert x.shape == (len(Rm), 6)
    assert torch.equal(x[:, :3], Rm[:, :, 0]) and torch.equal(x[:, 3:], Rm[:, :, 1])
    assert (G.sixd_to_matrix(x) - Rm).abs().max() < 1e-13
    # Gram–Schmidt of perturbed, scaled columns, checked against an explicit construction
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100, 6, generator=g, dtype=torch.float64)
    R = G.sixd_to_matrix(y)
    a1, a2 = y[:, :3].numpy(), y[:, 3:].numpy()
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=-1, keepdims=True)
    ref = np.stack((b1, b2, np.cross(b1, b2)), axis=-1)
    assert np.abs(R.numpy() - ref).max() < 1e-13
    assert (torch.det(R) - 1).abs().max() < 1e-13


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_round_trips(shape, dtype, device):
    g = torch.Generator().manual_seed(7)
    q64 = G.random_quat(*shape, generator=g, dtype=torch.float64)
    R64 = G.quat_to_matrix(q64)
    q = q64.to(dtype=dtype, device=device)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    R = G.quat_to_matrix(q)
    assert R.shape == (*shape, 3, 3) and R.dtype == dtype and R.device.type == device
    assert (R.cpu().double() - R64).abs().max() < tol
    checks = [
        (G.matrix_to_quat(R), q),
        (G.quat_to_matrix(G.matrix_to_quat(R)), R),
        (G.axis_angle_to_matrix(G.matrix_to_axis_angle(R)), R),
        (G.quat_to_matrix(G.axis_angle_to_quat(G.quat_to_axis_angle(q))), R),
        (G.sixd_to_matrix(G.matrix_to_sixd(R)), R),
        (G.so3_hat(G.so3_vee(R - R.transpose(-1, -2))), R - R.transpose(-1, -2)),
    ]
    for out, ref in checks:
        assert out.shape == ref.shape and out.dtype == dtype and out.device == ref.device
        if out.shape[-1] == 4:
            err = torch.minimum((out - ref).abs(), (out + ref).abs())
        else:
            err = (out - ref).abs()
        assert err.max() < 10 * tol
    assert G.matrix_to_axis_angle(R).shape == (*shape, 3)
    assert G.matrix_to_sixd(R).shape == (*shape, 6)
    for conv in ("xyz", "ZXZ"):
        e = G.matrix_to_euler(R, conv, warn=False)
        assert e.shape == (*shape, 3) and e.dtype == dtype
        assert (G.euler_to_matrix(e, conv) - R).abs().max() < 10 * tol


def test_empty_batch():
    q = torch.zeros(0, 4)
    assert G.quat_to_matrix(q).shape == (0, 3, 3)
    assert G.matrix_to_quat(torch.zeros(0, 3, 3)).shape == (0, 4)
    assert G.axis_angle_to_matrix(torch.zeros(0, 3)).shape == (0, 3, 3)


def test_so3_hat_vee():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 3, generator=g, dtype=torch.float64)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    K = G.so3_hat(w)
    assert torch.allclose(K @ x.unsqueeze(-1), torch.linalg.cross(w, x).unsqueeze(-1))
    assert torch.equal(G.so3_vee(K), w)
    assert torch.allclose(torch.linalg.matrix_exp(K), G.axis_angle_to_matrix(w), atol=1e-13)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(all_quats):
    qc = all_quats.cuda()
    R = G.quat_to_matrix(all_quats)
    assert (G.quat_to_matrix(qc).cpu() - R).abs().max() < 1e-13
    assert (G.matrix_to_quat(R.cuda()).cpu() - G.matrix_to_quat(R)).abs().max() < 1e-13
    v = G.matrix_to_axis_angle(R)
    assert (G.matrix_to_axis_angle(R.cuda()).cpu() - v).abs().max() < 1e-12
    assert (G.axis_angle_to_matrix(v.cuda()).cpu() - G.axis_angle_to_matrix(v)).abs().max() < 1e-13
