"""Degenerate inputs of the Procrustes / averaging family (issue #11, item 5).

At rank-deficient input the nearest rotation is not unique and the exact derivative
blows up (1/(σ_i + σ_j) with σ_i + σ_j ~ 1e-17: gradients of 1e14…1e154 before the fix).
Specification: gradients bounded, and a small step along -grad decreases the loss. The
plausible bug each test catches: an undamped 1/(σ_i + σ_j) (or a floor of tiny^0.5)."""

from __future__ import annotations

import pytest
import torch

import geo3d.rotations as G

D = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_to_so3_rank_one_bounded_and_descent(dtype):
    """Generic loss |R - Rt|² at M = u vᵀ. float64: every seed decreases along -grad.
    float32: the rank-1 rounding noise (~1e-7 σ₁) competes with the step, so only the
    bound is asserted there (descent in float32 is asserted on losses that do not depend
    on the free rotation, below)."""
    for seed in range(20):
        g = _g(seed)
        u = torch.randn(3, generator=g, dtype=D)
        v = torch.randn(3, generator=g, dtype=D)
        Rt = G.random_rotation_matrix(generator=g, dtype=D).to(dtype)
        M = torch.outer(u, v).to(dtype).requires_grad_(True)  # singular values (σ, 0, 0)
        loss = ((G.project_to_so3(M) - Rt) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, M)
        # |dL/dR| <= 2 |R - Rt| <= 4·√3: the damped derivative stays within a few units
        assert torch.isfinite(grad).all() and grad.abs().max() < 20.0, grad
        if dtype == D:
            with torch.no_grad():
                after = ((G.project_to_so3(M - 1e-3 * grad) - Rt) ** 2).sum()
            assert after < loss, (seed, float(loss), float(after))


def test_project_to_so3_gradient_matches_roma_where_unique():
    """roma's damped derivative (an independent implementation) and ours agree where the
    projection is unique, including rank 2 (σ₃ = 0) and det < 0. (At rank <= 1 the two
    libraries pick different nearest rotations, so their gradients are not comparable.)"""
    roma = pytest.importorskip("roma")
    for seed in range(5):
        g = _g(100 + seed)
        Gr = torch.randn(3, 3, generator=g, dtype=D)
        A = torch.randn(3, 3, generator=g, dtype=D)
        U, _, Vh = torch.linalg.svd(A)
        rank2 = U @ torch.diag(torch.tensor([2.0, 0.5, 0.0], dtype=D)) @ Vh
        for M0 in (A, rank2, -A):
            M = M0.clone().requires_grad_(True)
            (ours,) = torch.autograd.grad((G.project_to_so3(M) * Gr).sum(), M)
            M = M0.clone().requires_grad_(True)
            (ref,) = torch.autograd.grad((roma.special_procrustes(M[None])[0] * Gr).sum(), M)
            # roma damps 1/x to x/(x² + 1e-10): a relative difference of ~1e-10/x²
            assert (ours - ref).abs().max() < 1e-6 * (1 + ref.abs().max())


def _collinear(seed: int, n: int = 12, dtype=D):
    g = _g(seed)
    d = torch.randn(3, generator=g, dtype=D)
    lam = torch.randn(n, 1, generator=g, dtype=D)
    P = torch.randn(3, generator=g, dtype=D) + lam * d  # collinear along a random line
    Q = torch.randn(n, 3, generator=g, dtype=D)
    return P.to(dtype), Q.to(dtype)


def _residual(P, Q, R, t):
    return ((P @ R.mT + t - Q) ** 2).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kabsch_collinear_gradient_is_the_exact_one(dtype):
    """Collinear P: H = Σ q̃ p̃ᵀ has rank 1 for any Q, the rotation about the line is free
    and the optimal residual does not depend on it, so d(residual)/dQ exists. It must match
    float64 central finite differences (with the same free choice made each time it does
    not matter), be bounded, and a step along -grad must decrease it."""
    for seed in range(4):
        P, Q = _collinear(seed, dtype=dtype)
        Qg = Q.clone().requires_grad_(True)
        loss = _residual(P, Qg, *G.kabsch(P, Qg))
        (grad,) = torch.autograd.grad(loss, Qg)
        assert torch.isfinite(grad).all() and grad.abs().max() < 1e3
        P64, Q64 = P.double(), Q.double()
        h = 1e-6
        fd = torch.zeros_like(Q64)
        for i in range(Q.shape[0]):
            for j in range(3):
                E = torch.zeros_like(Q64)
                E[i, j] = h
                fd[i, j] = (
                    _residual(P64, Q64 + E, *G.kabsch(P64, Q64 + E))
                    - _residual(P64, Q64 - E, *G.kabsch(P64, Q64 - E))
                ) / (2 * h)
        tol = 1e-6 if dtype == D else 2e-3
        assert (grad.double() - fd).abs().max() <= tol * (1 + fd.abs().max())
        with torch.no_grad():
            after = _residual(P, Q - 1e-3 * grad, *G.kabsch(P, Q - 1e-3 * grad))
        assert after < loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kabsch_and_umeyama_gradients_wrt_degenerate_points(dtype):
    """Gradients with respect to the collinear / coincident cloud itself (the free
    rotation is then part of the loss): bounded and finite, for a generic loss."""
    g = _g(7)
    target = G.random_rotation_matrix(generator=g, dtype=dtype)
    for P, Q in (
        _collinear(3, dtype=dtype),  # collinear source
        _collinear(4, dtype=dtype)[::-1],  # collinear target
        (
            torch.randn(6, 3, generator=g, dtype=dtype),
            torch.ones(6, 3, dtype=dtype),
        ),  # Q coincident
    ):
        P = P.clone().requires_grad_(True)
        Q = Q.clone().requires_grad_(True)
        R, t = G.kabsch(P, Q)
        loss = ((R - target) ** 2).sum() + (t**2).sum()
        gP, gQ = torch.autograd.grad(loss, (P, Q))
        for gr in (gP, gQ):
            assert torch.isfinite(gr).all() and gr.abs().max() < 1e3
        s, R, t = G.umeyama(P, Q)
        loss = ((R - target) ** 2).sum() + (t**2).sum() + s**2
        gP, gQ = torch.autograd.grad(loss, (P, Q))
        for gr in (gP, gQ):
            assert torch.isfinite(gr).all() and gr.abs().max() < 1e3


def test_no_information_gives_identity():
    P = torch.randn(5, 3, generator=_g(1), dtype=D)
    eye = torch.eye(3, dtype=D)
    R, t = G.kabsch(P, torch.ones(5, 3, dtype=D))  # Q coincident: H = 0
    assert torch.equal(R, eye) and (t - (1.0 - P.mean(0))).abs().max() < 1e-15
    R, t = G.kabsch(torch.zeros(0, 3, dtype=D), torch.zeros(0, 3, dtype=D))  # N = 0
    assert torch.equal(R, eye) and torch.equal(t, torch.zeros(3, dtype=D))
    s, R, t = G.umeyama(P, torch.full((5, 3), 2.0, dtype=D))
    assert s == 0 and torch.equal(R, eye) and (t - 2.0).abs().max() < 1e-15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_rotation_of_antipodal_pair(dtype):
    """The chordal mean of R and R·Rx(π) is degenerate (mean matrix R diag(1, 0, 0), rank
    1): every R·Rx(φ) is a minimiser. Perturb the pair by R_i exp([w_i]x) from w = 0:
    gradients with respect to w stay bounded, and a loss of the determined part of the
    mean (its first column, the common axis) decreases along -grad."""
    g = _g(11)
    Rx = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=D))
    for _ in range(5):
        R0 = G.random_rotation_matrix(generator=g, dtype=D)
        pair = torch.stack((R0, R0 @ Rx)).to(dtype)
        target = torch.randn(3, generator=g, dtype=D).to(dtype)

        def loss_fn(w, pair=pair, target=target):
            M = G.mean_rotation(pair @ G.axis_angle_to_matrix(w))
            return ((M[:, 0] - target) ** 2).sum()

        w = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
        loss = loss_fn(w)
        (grad,) = torch.autograd.grad(loss, w)
        assert torch.isfinite(grad).all() and grad.abs().max() < 1e2, grad
        with torch.no_grad():
            after = loss_fn(-1e-4 * grad)
        assert after < loss
