"""gradcheck (float64) for every differentiable function; finite gradients at 0 and π."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import geo3d.rotations as G

D = torch.float64


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rot(n: int = 3, seed: int = 0) -> torch.Tensor:
    return G.random_rotation_matrix(n, generator=_g(seed), dtype=D)


def _pts(seed: int = 0):
    g = _g(seed)
    P = torch.randn(2, 8, 3, generator=g, dtype=D)
    Q = P @ _rot(2, seed + 1).mT + torch.randn(2, 1, 3, generator=g, dtype=D)
    Q = Q + 0.1 * torch.randn(2, 8, 3, generator=g, dtype=D)
    return P, Q, torch.rand(2, 8, generator=g, dtype=D) + 0.1


def _cases():
    g = _g(1)
    q = G.random_quat(3, generator=g, dtype=D)
    q2 = G.random_quat(3, generator=g, dtype=D)
    v = torch.randn(3, 3, generator=g, dtype=D)
    x6 = torch.randn(3, 6, generator=g, dtype=D)
    ang = torch.rand(3, 3, generator=g, dtype=D) + 0.2
    M = torch.randn(3, 3, 3, generator=g, dtype=D)
    P, Q, w = _pts()
    xi = torch.randn(3, 6, generator=g, dtype=D)
    T = G.se3_exp(torch.randn(3, 6, generator=g, dtype=D))
    t = torch.rand(3, generator=g, dtype=D)
    return {
        "quat_to_matrix": (G.quat_to_matrix, (q,)),
        "matrix_to_quat": (G.matrix_to_quat, (_rot(),)),
        "axis_angle_to_matrix": (G.axis_angle_to_matrix, (v,)),
        "matrix_to_axis_angle": (G.matrix_to_axis_angle, (_rot(),)),
        "axis_angle_to_quat": (G.axis_angle_to_quat, (v,)),
        "quat_to_axis_angle": (G.quat_to_axis_angle, (q,)),
        "sixd_to_matrix": (G.sixd_to_matrix, (x6,)),
        "matrix_to_sixd": (G.matrix_to_sixd, (_rot(),)),
        "euler_to_matrix": (lambda a: G.euler_to_matrix(a, "zyx"), (ang,)),
        "euler_to_matrix_sym": (lambda a: G.euler_to_matrix(a, "XZX"), (ang,)),
        "matrix_to_euler": (lambda R: G.matrix_to_euler(R, "xyz"), (_rot(),)),
        "matrix_to_euler_sym": (lambda R: G.matrix_to_euler(R, "ZYZ"), (_rot(),)),
        "quat_multiply": (G.quat_multiply, (q, q2)),
        "quat_conjugate": (G.quat_conjugate, (q,)),
        "quat_apply": (G.quat_apply, (q, v)),
        "quat_slerp": (G.quat_slerp, (q, q2, t)),
        "quat_distance": (G.quat_distance, (q, q2)),
        "quat_normalize": (G.quat_normalize, (q * 2,)),
        "geodesic_distance": (G.geodesic_distance, (_rot(3, 1), _rot(3, 2))),
        "mean_rotation": (
            lambda R, w: G.mean_rotation(R, w, dim=0),
            (_rot(4), torch.rand(4, dtype=D)),
        ),
        "project_to_so3": (G.project_to_so3, (M,)),
        "kabsch": (G.kabsch, (P, Q, w)),
        "umeyama": (G.umeyama, (P, Q, w)),
        "se3_exp": (G.se3_exp, (xi,)),
        "se3_log": (G.se3_log, (T,)),
        "se3_inverse": (G.se3_inverse, (T,)),
        "se3_apply": (G.se3_apply, (T, v)),
        "so3_hat": (G.so3_hat, (v,)),
        "so3_vee": (G.so3_vee, (M,)),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_generic(name):
    fn, args = CASES[name]
    args = tuple(a.detach().clone().requires_grad_(True) for a in args)
    assert gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


SMOOTH_AT_IDENTITY = {
    "axis_angle_to_matrix": lambda: (G.axis_angle_to_matrix, torch.zeros(2, 3, dtype=D)),
    "axis_angle_to_quat": lambda: (G.axis_angle_to_quat, torch.zeros(2, 3, dtype=D)),
    "quat_to_axis_angle": lambda: (
        G.quat_to_axis_angle,
        torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=D),
    ),
    "matrix_to_axis_angle": lambda: (G.matrix_to_axis_angle, torch.eye(3, dtype=D).repeat(2, 1, 1)),
    "matrix_to_quat": lambda: (G.matrix_to_quat, torch.eye(3, dtype=D).repeat(2, 1, 1)),
    "se3_exp": lambda: (G.se3_exp, torch.cat((torch.ones(2, 3), torch.zeros(2, 3)), -1).double()),
    "se3_log": lambda: (
        G.se3_log,
        G.se3_exp(torch.cat((torch.ones(2, 3), torch.zeros(2, 3)), -1).double()),
    ),
    # repeated singular values: torch.linalg.svd's backward is NaN/inf here, ours is exact
    "project_to_so3_rotation": lambda: (G.project_to_so3, _rot(2)),
    "project_to_so3_identity": lambda: (
        G.project_to_so3,
        2.0 * torch.eye(3, dtype=D).repeat(2, 1, 1),
    ),
    "project_to_so3_repeated": lambda: (
        G.project_to_so3,
        _rot(2) @ torch.diag(torch.tensor([3.0, 1.0, 1.0], dtype=D)),
    ),
}


@pytest.mark.parametrize("name", sorted(SMOOTH_AT_IDENTITY))
def test_gradcheck_at_singular_looking_points(name):
    """Functions that are smooth at the identity (or at repeated singular values) must pass
    gradcheck exactly there, not merely return finite numbers."""
    fn, x = SMOOTH_AT_IDENTITY[name]()
    assert gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_near_taylor_threshold():
    for theta in (1e-5, 0.0316, 0.0317, 0.5):
        v = (theta * torch.tensor([[0.48, 0.6, 0.64]], dtype=D)).requires_grad_(True)
        assert gradcheck(G.axis_angle_to_matrix, (v,), eps=1e-7, atol=1e-7)
        assert gradcheck(G.axis_angle_to_quat, (v,), eps=1e-7, atol=1e-7)
        q = G.axis_angle_to_quat(v.detach()).requires_grad_(True)
        assert gradcheck(G.quat_to_axis_angle, (q,), eps=1e-7, atol=1e-7)
        xi = torch.cat((torch.ones(1, 3, dtype=D), v.detach()), -1).requires_grad_(True)
        assert gradcheck(G.se3_exp, (xi,), eps=1e-7, atol=1e-7)


def _special_points() -> dict[str, torch.Tensor]:
    eye = torch.eye(3, dtype=D)
    axes = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.48, 0.6, 0.64]], dtype=D)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    pi_rots = G.axis_angle_to_matrix(math.pi * axes)
    return {"identity": eye.expand(5, 3, 3).clone(), "pi": pi_rots}


def _finite_grad(fn, *inputs) -> None:
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs)
    for gr in grads:
        assert torch.isfinite(gr).all(), f"non-finite gradient for {fn}"


@pytest.mark.parametrize("where", ["identity", "pi"])
def test_finite_gradients_at_identity_and_pi(where):
    R = _special_points()[where]
    q = G.matrix_to_quat(R)
    v = G.matrix_to_axis_angle(R)
    T = torch.eye(4, dtype=D).repeat(len(R), 1, 1)
    T[:, :3, :3] = R
    fns = [
        (G.matrix_to_quat, R),
        (G.matrix_to_axis_angle, R),
        (G.quat_to_axis_angle, q),
        (G.quat_to_matrix, q),
        (G.axis_angle_to_matrix, v),
        (G.axis_angle_to_quat, v),
        (G.sixd_to_matrix, G.matrix_to_sixd(R)),
        (G.matrix_to_sixd, R),
        (lambda R: G.matrix_to_euler(R, "xyz", warn=False), R),
        (lambda R: G.matrix_to_euler(R, "ZXZ", warn=False), R),
        (lambda R: G.geodesic_distance(R, R), R),  # distance 0
        (lambda R: G.geodesic_distance(torch.eye(3, dtype=D), R), R),
        (lambda q: G.quat_distance(q, q), q),
        (lambda q: G.quat_distance(torch.tensor([1.0, 0, 0, 0], dtype=D), q), q),
        (lambda q: G.quat_slerp(q, q, 0.3), q),
        (G.project_to_so3, R),
        (lambda R: G.mean_rotation(R, dim=0), R[:2]),
        (G.se3_log, T),
        (G.se3_exp, torch.cat((torch.ones_like(v), v), -1)),
    ]
    for fn, x in fns:
        _finite_grad(fn, x)
    # and the geodesic distance has a finite gradient with respect to both arguments at 0
    _finite_grad(G.geodesic_distance, R, R)


def test_project_to_so3_gradient_matches_svd_where_defined():
    M = torch.randn(4, 3, 3, generator=_g(9), dtype=D, requires_grad=True)
    G2 = torch.randn(4, 3, 3, generator=_g(10), dtype=D)
    (gx,) = torch.autograd.grad((G.project_to_so3(M) * G2).sum(), M)
    U, S, Vh = torch.linalg.svd(M)
    d = torch.det(U @ Vh)
    Dg = torch.diag_embed(torch.stack((torch.ones_like(d), torch.ones_like(d), d), -1))
    (gy,) = torch.autograd.grad(((U @ Dg @ Vh) * G2).sum(), M)
    assert (gx - gy).abs().max() < 1e-10
