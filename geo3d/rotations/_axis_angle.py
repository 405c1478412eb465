"""Rotation vectors (axis-angle), the so(3) hat/vee maps."""

from __future__ import annotations

import torch

from geo3d.rotations._checks import check_finite, check_tensor, values_enabled
from geo3d.rotations._quat import _check_quat_norm, _idx, matrix_to_quat

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "axis_angle_to_quat",
    "quat_to_axis_angle",
    "so3_hat",
    "so3_vee",
]

# Below this squared angle, Taylor series in θ² are used (|error| < 1e-18 relative with the
# terms kept). They keep values accurate and gradients finite at θ = 0: the other branch is
# evaluated at a safe dummy input, so that torch.where's unused branch has no NaN gradient.
_SMALL = 1e-3


def _sin_over_x_and_1mcos_over_x2(t2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin θ/θ, (1 - cos θ)/θ²) as functions of θ² (smooth at 0)."""
    small = t2 < _SMALL
    t2s = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2s)
    h = 0.5 * t
    sh = torch.sin(h)
    big_a = torch.sin(t) / t
    big_b = 2.0 * (sh / t) ** 2  # 2 sin²(θ/2)/θ² : no cancellation
    sm_a = 1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0))
    sm_b = 0.5 - t2 / 24.0 * (1.0 - t2 / 30.0 * (1.0 - t2 / 56.0))
    return torch.where(small, sm_a, big_a), torch.where(small, sm_b, big_b)


def so3_hat(omega: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric matrix ``[ω]×`` with ``[ω]× v = ω × v``.

    Args:
        omega: vectors, shape :math:`(*, 3)`.

    Returns:
        Skew-symmetric matrices, shape :math:`(*, 3, 3)`.
    """
    check_tensor("omega", omega, (3,))
    x, y, z = omega.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), dim=-1).unflatten(-1, (3, 3))


def so3_vee(K: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`so3_hat` (uses the skew-symmetric part of ``K``).

    Args:
        K: matrices, shape :math:`(*, 3, 3)`.

    Returns:
        Vectors ``ω`` with ``[ω]× = (K - Kᵀ)/2``, shape :math:`(*, 3)`.
    """
    check_tensor("K", K, (3, 3))
    return 0.5 * torch.stack(
        (K[..., 2, 1] - K[..., 1, 2], K[..., 0, 2] - K[..., 2, 0], K[..., 1, 0] - K[..., 0, 1]),
        dim=-1,
    )


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from rotation vectors (Rodrigues), exact and smooth at 0.

    Args:
        v: rotation vectors ``θ n`` (axis times angle in radians), shape :math:`(*, 3)`.

    Returns:
        Rotation matrices, shape :math:`(*, 3, 3)`.
    """
    check_tensor("v", v, (3,))
    t2 = (v * v).sum(-1, keepdim=True)
    if values_enabled():
        check_finite("v", t2)
    a, b = _sin_over_x_and_1mcos_over_x2(t2)
    # R = I + a [v]x + b [v]x² = (1 - b θ²) I + b v vᵀ + a [v]x
    bv = b * v
    p = bv * v  # b (xx, yy, zz)
    q = bv * v.index_select(-1, _idx(v.device, 1))  # b (xy, yz, zx)
    r = a * v.index_select(-1, _idx(v.device, 2))  # a (z, x, y)
    d = (1.0 - b * t2) + p
    d0, d1, d2 = d.unbind(-1)
    m0, m1, m2 = (q - r).unbind(-1)  # R01, R12, R20
    p0, p1, p2 = (q + r).unbind(-1)  # R10, R21, R02
    out = torch.stack((d0, m0, p2, p0, d1, m1, m2, p1, d2), dim=-1)
    return out.unflatten(-1, (3, 3))


def axis_angle_to_quat(v: torch.Tensor) -> torch.Tensor:
    """Unit quaternions from rotation vectors.

    Args:
        v: rotation vectors, shape :math:`(*, 3)`.

    Returns:
        Unit quaternions ``wxyz`` with ``w >= 0``, shape :math:`(*, 4)`.
    """
    check_tensor("v", v, (3,))
    t2 = (v * v).sum(-1, keepdim=True)
    if values_enabled():
        check_finite("v", t2)
    small = t2 < _SMALL
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    h = 0.5 * t
    big_w, big_k = torch.cos(h), torch.sin(h) / t
    sm_w = 1.0 - t2 / 8.0 * (1.0 - t2 / 48.0 * (1.0 - t2 / 120.0))
    sm_k = 0.5 * (1.0 - t2 / 24.0 * (1.0 - t2 / 80.0 * (1.0 - t2 / 168.0)))
    w = torch.where(small, sm_w, big_w)
    k = torch.where(small, sm_k, big_k)
    # w >= 0 (angles beyond π give the antipodal quaternion)
    k = k * torch.copysign(torch.ones_like(w), w)
    return torch.cat((w.abs(), v * k), dim=-1)


def quat_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Rotation vectors from quaternions (angle in ``[0, π]``).

    Uses ``θ = 2 atan2(|u|, |w|)``, accurate near 0 and π, with a Taylor branch so the
    gradient is finite at the identity. Non-unit quaternions are implicitly normalised.

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.

    Returns:
        Rotation vectors, shape :math:`(*, 3)`.
    """
    check_tensor("q", q, (4,))
    if values_enabled():
        _check_quat_norm("q", (q * q).sum(-1))
    w = q[..., :1]
    u = q[..., 1:]
    sgn = torch.copysign(torch.ones_like(w), w)
    w = w.abs()
    n2 = (u * u).sum(-1, keepdim=True)
    small = n2 < _SMALL * (w * w)  # |u|/|w| small: θ small (also implies w > 0)
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    big = 2.0 * torch.atan2(n, w) / n
    ws = torch.where(small, w, torch.ones_like(w))
    r2 = n2 / (ws * ws)
    sm = (2.0 / ws) * (1.0 - r2 * (1.0 / 3.0 - r2 * (1.0 / 5.0 - r2 * (1.0 / 7.0 - r2 / 9.0))))
    return u * (sgn * torch.where(small, sm, big))


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation vectors from rotation matrices (angle in ``[0, π]``).

    Goes through :func:`matrix_to_quat` (robust branch selection), so rotations by π about
    any axis are exact and gradients are finite at the identity and at π.

    Args:
        R: rotation matrices, shape :math:`(*, 3, 3)`.

    Returns:
        Rotation vectors, shape :math:`(*, 3)`.
    """
    check_tensor("R", R, (3, 3))
    return quat_to_axis_angle(matrix_to_quat(R))
