"""SE(3) exp/log, inverse and action."""

from __future__ import annotations

import math

import pytest
import torch

import geo3d.rotations as G


def _twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    X = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    X[..., :3, :3] = G.so3_hat(xi[..., 3:])
    X[..., :3, 3] = xi[..., :3]
    return X


def _twists(n: int, g: torch.Generator) -> torch.Tensor:
    xi = torch.randn(n, 6, generator=g, dtype=torch.float64)
    ang = torch.tensor([0.0, 1e-12, 1e-8, 1e-4, 0.03, 0.04, 1.0, 3.0, math.pi - 1e-6])
    xi[: len(ang), 3:] *= (ang.double() / xi[: len(ang), 3:].norm(dim=-1))[:, None]
    return xi


def test_exp_matches_matrix_exp():
    g = torch.Generator().manual_seed(0)
    xi = _twists(50, g)
    T = G.se3_exp(xi)
    assert (T - torch.linalg.matrix_exp(_twist_matrix(xi))).abs().max() < 1e-12


def test_log_inverts_exp():
    g = torch.Generator().manual_seed(1)
    xi = _twists(50, g)
    xi[:, 3:] *= torch.where(xi[:, 3:].norm(dim=-1, keepdim=True) > math.pi, 0.3, 1.0)
    assert (xi[:, 3:].norm(dim=-1) < math.pi).all()
    assert (G.se3_log(G.se3_exp(xi)) - xi).abs().max() < 1e-10
    # and exp(log(T)) = T for arbitrary transforms, including rotations by exactly π
    R = G.random_rotation_matrix(20, generator=g, dtype=torch.float64)
    R[0] = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    T = torch.eye(4, dtype=torch.float64).repeat(20, 1, 1)
    T[:, :3, :3] = R
    T[:, :3, 3] = torch.randn(20, 3, generator=g, dtype=torch.float64)
    assert (G.se3_exp(G.se3_log(T)) - T).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_and_apply(dtype):
    g = torch.Generator().manual_seed(2)
    T = G.se3_exp(torch.randn(4, 1, 6, generator=g, dtype=dtype))
    x = torch.randn(4, 7, 3, generator=g, dtype=dtype)
    y = G.se3_apply(T, x)
    assert y.shape == (4, 7, 3)
    ref = (T[..., :3, :3] @ x.unsqueeze(-1)).squeeze(-1) + T[..., :3, 3]
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    assert (y - ref).abs().max() < tol
    Ti = G.se3_inverse(T)
    assert (G.se3_apply(Ti, y) - x).abs().max() < tol
    assert (Ti @ T - torch.eye(4, dtype=dtype)).abs().max() < tol
    assert (Ti - torch.linalg.inv(T)).abs().max() < tol
