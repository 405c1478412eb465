"""``geodesic_distance``: both of its formulas (the exact atan2 one for small batches and
traced code, and the asin one with the exact one for rows near π, for large batches)
against independent references, and its derivative at the singular points.

References: scipy's ``(Rotation.from_matrix(R1).inv() * Rotation.from_matrix(R2))
.magnitude()``, the angle each pair was built with (mpmath), and the analytic directional
derivative ``d/dt θ(R1, R2 exp(t [k]×)) = n·k`` (n the axis of ``R1ᵀ R2``), which at π is
``∓|n·k|`` from the two sides and at 0 does not exist (a cone point)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

import geo3d.rotations as G
from geo3d.rotations import _procrustes

D = torch.float64


@pytest.fixture(params=["exact", "asin"])
def path(request, monkeypatch):
    """Which formula serves the batch: 'asin' forces the large-batch path at any size."""
    if request.param == "asin":
        monkeypatch.setattr(_procrustes, "_FAST_MIN_NUMEL", 0)
    return request.param


def _pairs(dtype=D):
    """(R1, R2, angle): random R1, R2 = R1 · rot(axis, angle), angles exactly 0 and π,
    within 1e-12..1e-8 of them, both sides of the asin/exact switch (cos(θ/2) = 0.01),
    and random ones; axes: coordinate, diagonal and random. Built in float64 from the
    exact angle (mpmath), then rounded to ``dtype``."""
    g = torch.Generator().manual_seed(21)
    axes = torch.cat((torch.eye(3, dtype=D), torch.tensor([[1.0, 1, 1], [1, -1, 0]], dtype=D),
                      torch.randn(3, 3, generator=g, dtype=D)))
    axes = axes / axes.norm(dim=-1, keepdim=True)
    pi = mpmath.mpf(mpmath.pi)
    gaps = [0, 1e-12, 1e-9, 1e-8, 1e-4, 0.0199, 0.0201, 0.5, 1.5]
    angles = [mpmath.mpf(x) for x in gaps] + [pi - mpmath.mpf(x) for x in gaps]
    rows = []
    for a in angles:
        for n in axes:
            rows.append((float(a), n))
    th = torch.tensor([r[0] for r in rows], dtype=D)
    n = torch.stack([r[1] for r in rows])
    rel = G.axis_angle_to_matrix(n * th[:, None])
    rel[th == math.pi] = 2.0 * n[th == math.pi, :, None] * n[th == math.pi, None, :] - torch.eye(
        3, dtype=D)  # exactly π (float(π) is below π: the matrix is built from its axis)
    R1 = G.random_rotation_matrix(len(th), generator=g, dtype=D)
    ang = th.clone()
    ang[th == math.pi] = math.pi
    R1 = torch.cat((R1, G.random_rotation_matrix(200, generator=g, dtype=D)))
    R2 = torch.cat((R1[: len(th)] @ rel, G.random_rotation_matrix(200, generator=g, dtype=D)))
    ang = torch.cat((ang, torch.full((200,), float("nan"), dtype=D)))
    return R1.to(dtype), R2.to(dtype), ang


def _scipy(R1: torch.Tensor, R2: torch.Tensor) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    r1 = Rotation.from_matrix(R1.double().numpy())
    r2 = Rotation.from_matrix(R2.double().numpy())
    return (r1.inv() * r2).magnitude()


def test_float64_matches_scipy_and_the_constructed_angle(path):
    R1, R2, ang = _pairs()
    d = G.geodesic_distance(R1, R2)
    ref = _scipy(R1, R2)
    assert d.dtype == D and d.shape == ang.shape
    assert np.abs(d.numpy() - ref).max() < 1e-12
    known = ~torch.isnan(ang)
    assert (d[known] - ang[known]).abs().max() < 1e-12
    # the exact zero and π rows give exactly 0 and π within a few ε
    assert (d[ang == 0.0]).abs().max() < 1e-15
    assert (d[ang == math.pi] - math.pi).abs().max() < 1e-14
    # broadcasting: one R1 against a batch
    d1 = G.geodesic_distance(R1[0], R2)
    ref1 = _scipy(R1[0].expand_as(R2), R2)
    assert np.abs(d1.numpy() - ref1).max() < 1e-12


def test_float32_is_as_accurate_as_its_input(path):
    """Against the float64 result for the same float32 matrices: the exact formula is
    within a few ε; the asin one turns an error δ of the chord into δ/(√2 cos(θ/2)),
    ≤ ~70 δ where it is used."""
    R1, R2, _ = _pairs(torch.float32)
    d = G.geodesic_distance(R1, R2)
    ref = torch.from_numpy(_scipy(R1, R2))
    assert d.dtype == torch.float32
    eps = torch.finfo(torch.float32).eps
    tol = (8 if path == "exact" else 400) * eps
    assert (d.double() - ref).abs().max() < tol


def _hat(k: torch.Tensor) -> torch.Tensor:
    x, y, z = k.tolist()
    return torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=D)


def _directional(dtype, R1, R2, wrt: int, mode: str) -> torch.Tensor:
    """Derivatives of θ(R1, R2) along R_wrt [e_i]× (i = 0, 1, 2), float64."""
    R1, R2 = R1.to(dtype), R2.to(dtype)

    def f(x):
        return G.geodesic_distance(x, R2) if wrt == 1 else G.geodesic_distance(R1, x)

    x = R1 if wrt == 1 else R2
    if mode == "rev":
        xg = x.clone().requires_grad_(True)
        (J,) = torch.autograd.grad(f(xg), xg)
    else:
        J = torch.func.jacfwd(f)(x)
    assert torch.isfinite(J).all()
    xd = x.double()
    return torch.stack([(J.double() * (xd @ _hat(e))).sum() for e in torch.eye(3, dtype=D)])


def _rot_pi(n) -> torch.Tensor:
    n = torch.tensor(n, dtype=D)
    n = n / n.norm()
    return 2.0 * torch.outer(n, n) - torch.eye(3, dtype=D)


BASES = {
    "identity": torch.eye(3, dtype=D),
    "permutation": torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=D),
    "random": G.random_rotation_matrix(generator=torch.Generator().manual_seed(5), dtype=D),
}


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("base", sorted(BASES))
def test_gradient_at_exactly_0_and_pi(base, dtype, mode, path):
    """At θ = π about n: 0 along axes orthogonal to n and a one-sided value ±1 along n
    (analytically θ(t) = π - |t|); at θ = 0 (cone point): 0. Both arguments; a NaN or a
    zero derivative along n at π (the bugs of asin at π, or of |v|'s subgradient) fail."""
    if mode == "fwd" and path == "asin":
        pytest.skip("torch.func transforms always use the exact formula (no host read)")
    B = BASES[base]
    tol = 1e-6 if dtype == D else 1e-4
    for n in ([1.0, 0, 0], [0, 0, 1.0], [0.6, 0.8, 0.0], [1.0, 1.0, 1.0]):
        Rpi = _rot_pi(n)
        axis = torch.tensor(n, dtype=D) / torch.tensor(n, dtype=D).norm()
        # R2 = R1 rot(n, π): in R2's frame the axis is Rpiᵀ n = n; in R1's frame also n
        for wrt in (1, 2):
            got = _directional(dtype, B, B @ Rpi, wrt, mode)
            along = float(got @ axis)
            assert abs(abs(along) - 1.0) < tol, got
            assert (got - along * axis).abs().max() < tol, got
        for wrt in (1, 2):
            got = _directional(dtype, B, B.clone(), wrt, mode)
            assert got.abs().max() == 0.0, got


@pytest.mark.parametrize("gap", [1e-6, 1e-3, 1.0])
def test_gradient_near_0_and_pi_is_the_analytic_one(gap, path):
    """Off the singular points: d/dt θ(R1, R2 exp(t[k]×)) = n·k, and -n·k for R1, with n
    the rotation axis of R1ᵀ R2 (float64, both formulas)."""
    g = torch.Generator().manual_seed(8)
    R1 = G.random_rotation_matrix(generator=g, dtype=D)
    n = torch.randn(3, generator=g, dtype=D)
    n = n / n.norm()
    for th in (gap, math.pi - gap):
        R2 = R1 @ G.axis_angle_to_matrix(n * th)
        assert abs(G.geodesic_distance(R1, R2).item() - th) < 1e-12
        assert (_directional(D, R1, R2, 2, "rev") - n).abs().max() < 1e-8
        assert (_directional(D, R1, R2, 1, "rev") + n).abs().max() < 1e-8


def test_value_checks_off_and_compile_use_the_exact_formula():
    """With value checks off the exact formula runs branch-free (no host read) and gives
    the same values, NaN passes through instead of raising."""
    R1, R2, _ = _pairs()
    ref = G.geodesic_distance(R1, R2)
    old = G.set_value_checks(False)
    try:
        assert (G.geodesic_distance(R1, R2) - ref).abs().max() < 1e-15
        bad = R2.clone()
        bad[0, 0, 0] = float("nan")
        assert torch.isnan(G.geodesic_distance(R1, bad)[0])
    finally:
        G.set_value_checks(old)
    with pytest.raises(ValueError, match=r"R1, R2: expected finite"):
        G.geodesic_distance(R1, bad)
    assert G.geodesic_distance(R1[:0], R2[:0]).shape == (0,)
