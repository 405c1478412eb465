"""project_to_so3, mean_rotation, kabsch and umeyama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import geo3d.rotations as G


def test_project_to_so3_is_nearest_rotation():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(200, 3, 3, generator=g, dtype=torch.float64)
    R = G.project_to_so3(M)
    eye = torch.eye(3, dtype=torch.float64)
    assert (R.mT @ R - eye).abs().max() < 1e-13
    assert (torch.det(R) - 1).abs().max() < 1e-13
    # Nearest: no rotation in a random cloud around R does better, including for det(M) < 0.
    assert (torch.det(M) < 0).any()
    cost = ((R - M) ** 2).sum((-1, -2))
    for _ in range(5):
        Z = G.random_rotation_matrix(200, generator=g, dtype=torch.float64)
        small = G.axis_angle_to_matrix(0.05 * torch.randn(200, 3, generator=g).double())
        for S in (Z, R @ small):
            assert (((S - M) ** 2).sum((-1, -2)) >= cost - 1e-12).all()
    # rotations are fixed points; scaling does not matter
    Q = G.random_rotation_matrix(10, generator=g, dtype=torch.float64)
    assert (G.project_to_so3(3.0 * Q) - Q).abs().max() < 1e-13


def test_mean_rotation_known_centre():
    g = torch.Generator().manual_seed(1)
    C = G.random_rotation_matrix(4, generator=g, dtype=torch.float64)  # (4, 3, 3)
    eps = 0.4 * torch.randn(4, 10, 3, generator=g, dtype=torch.float64)
    pert = G.axis_angle_to_matrix(torch.cat((eps, -eps), dim=1))  # symmetric pairs
    R = C[:, None] @ pert  # (4, 20, 3, 3)
    assert (G.mean_rotation(R, dim=1) - C).abs().max() < 1e-13
    # dim=-3 default, any position of the averaged dim
    assert (G.mean_rotation(R) - C).abs().max() < 1e-13
    assert (G.mean_rotation(R.transpose(0, 1), dim=0) - C).abs().max() < 1e-13


def test_mean_rotation_matches_scipy_weighted(sp):
    g = torch.Generator().manual_seed(2)
    q = G.random_quat(30, generator=g, dtype=torch.float64)
    w = torch.rand(30, generator=g, dtype=torch.float64)
    ref = sp.from_quat(q).mean(weights=w.numpy()).as_matrix()
    out = G.mean_rotation(G.quat_to_matrix(q), weights=w)
    assert np.abs(out.numpy() - ref).max() < 1e-10
    # zero weights ignore elements
    w0 = torch.cat((w[:10], torch.zeros(20, dtype=torch.float64)))
    out = G.mean_rotation(G.quat_to_matrix(q), weights=w0)
    ref = sp.from_quat(q[:10]).mean(weights=w[:10].numpy()).as_matrix()
    assert np.abs(out.numpy() - ref).max() < 1e-10


def _transform(P, R, t, s=1.0):
    return s * P @ R.mT + t.unsqueeze(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kabsch_recovers_transform(dtype):
    g = torch.Generator().manual_seed(3)
    P = torch.randn(6, 40, 3, generator=g, dtype=dtype)
    R = G.random_rotation_matrix(6, generator=g, dtype=dtype)
    t = torch.randn(6, 3, generator=g, dtype=dtype)
    Q = _transform(P, R, t)
    R2, t2 = G.kabsch(P, Q)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert (R2 - R).abs().max() < tol and (t2 - t).abs().max() < tol
    # weights: outliers with zero weight are ignored
    Qo = Q.clone()
    Qo[:, :5] += 10 * torch.randn(6, 5, 3, generator=g, dtype=dtype)
    w = torch.ones(6, 40, dtype=dtype)
    w[:, :5] = 0
    R3, t3 = G.kabsch(P, Qo, weights=w)
    assert (R3 - R).abs().max() < tol and (t3 - t).abs().max() < tol
    R4, _ = G.kabsch(P, Qo)  # unweighted is thrown off
    assert (R4 - R).abs().max() > 1e-3


def test_kabsch_reflection_and_scipy(sp):
    g = torch.Generator().manual_seed(4)
    P = torch.randn(20, 3, generator=g, dtype=torch.float64)
    F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    Q = P @ (G.random_rotation_matrix(generator=g, dtype=torch.float64) @ F).mT
    Q = Q + 0.05 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    w = torch.rand(20, generator=g, dtype=torch.float64)
    R, t = G.kabsch(P, Q, weights=w)
    assert abs(torch.det(R).item() - 1.0) < 1e-12  # a rotation, never the reflection
    # same optimum as scipy's align_vectors on the weighted-centred clouds
    wn = w / w.sum()
    Pc = P - (wn[:, None] * P).sum(0)
    Qc = Q - (wn[:, None] * Q).sum(0)
    ref, _ = sp.R.align_vectors(Qc.numpy(), Pc.numpy(), weights=w.numpy())
    assert np.abs(R.numpy() - ref.as_matrix()).max() < 1e-10
    assert (t - ((wn[:, None] * Q).sum(0) - R @ (wn[:, None] * P).sum(0))).abs().max() < 1e-13


def test_umeyama_recovers_similarity():
    g = torch.Generator().manual_seed(5)
    P = torch.randn(3, 2, 50, 3, generator=g, dtype=torch.float64)
    R = G.random_rotation_matrix(3, 2, generator=g, dtype=torch.float64)
    t = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    s = torch.rand(3, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    Q = _transform(P, R, t, s[..., None, None])
    s2, R2, t2 = G.umeyama(P, Q)
    assert (s2 - s).abs().max() < 1e-12
    assert (R2 - R).abs().max() < 1e-12 and (t2 - t).abs().max() < 1e-12
    w = torch.rand(3, 2, 50, generator=g, dtype=torch.float64)
    Qo = Q.clone()
    Qo[..., :3, :] += 5.0
    w[..., :3] = 0
    s3, R3, t3 = G.umeyama(P, Qo, weights=w)
    assert (s3 - s).abs().max() < 1e-12 and (R3 - R).abs().max() < 1e-12
    assert (t3 - t).abs().max() < 1e-12
