"""Rotation vectors (axis-angle), the so(3) hat/vee maps."""

from __future__ import annotations

import math

import torch

from geo3d.rotations._checks import check_finite, check_tensor, values_enabled
from geo3d.rotations._matrix_input import rotation_rows
from geo3d.rotations._quat import _check_quat_norm, _quat_from_rows, _rescaled

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
    if values_enabled():
        check_finite("v", v)
    # sin θ/θ = sinc(θ/π) and (1 - cos θ)/θ² = sinc(θ/2π)²/2: smooth and exact at θ = 0.
    # θ = sqrt(θ²) through torch.where with a safe input, so the gradient at v = 0 is exact
    # (not NaN). Scalar components: no small-dim reductions or gathers, fuses when compiled.
    x, y, z = v.unbind(-1)
    t2 = x * x + y * y + z * z
    pos = t2 > 0
    th = torch.where(pos, torch.sqrt(torch.where(pos, t2, 1.0)), 0.0)
    a = torch.sinc(th * (1.0 / math.pi))
    hb = torch.sinc(th * (0.5 / math.pi))
    b = 0.5 * hb * hb
    # R = I + a [v]x + b [v]x² = (1 - b θ²) I + b v vᵀ + a [v]x
    c = 1.0 - b * t2
    bx, by, bz = b * x, b * y, b * z
    ax, ay, az = a * x, a * y, a * z
    xy, xz, yz = bx * y, bx * z, by * z
    out = torch.stack(
        (
            c + bx * x, xy - az, xz + ay,
            xy + az, c + by * y, yz - ax,
            xz - ay, yz + ax, c + bz * z,
        ),
        dim=-1,
    )  # fmt: skip
    return out.unflatten(-1, (3, 3))


def axis_angle_to_quat(v: torch.Tensor) -> torch.Tensor:
    """Unit quaternions from rotation vectors.

    Args:
        v: rotation vectors, shape :math:`(*, 3)`.

    Returns:
        Unit quaternions ``wxyz`` with ``w >= 0``, shape :math:`(*, 4)`.
    """
    check_tensor("v", v, (3,))
    if values_enabled():
        check_finite("v", v)
    th = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    w = torch.cos(0.5 * th)
    k = 0.5 * torch.sinc(th * (0.5 / math.pi))  # sin(θ/2)/θ, exact and smooth at 0
    # w >= 0: angles beyond π give the antipodal quaternion
    return torch.cat((w.abs(), v * torch.where(w < 0, -k, k)), dim=-1)


def quat_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Rotation vectors from quaternions (angle in ``[0, π]``).

    Uses ``θ = 2 atan2(|u|, |w|)``, accurate near 0 and π; the gradient is finite at the
    identity and at ``w = 0`` (rotation by π), where it is the limit from ``w > 0``.
    Non-unit quaternions are implicitly normalised.

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.

    Returns:
        Rotation vectors, shape :math:`(*, 3)`.

    Raises:
        ValueError: wrong shape; (value checks on) a zero or non-finite quaternion.

    Example:
        >>> quat_to_axis_angle(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        tensor([3.1416, 0.0000, 0.0000])
    """
    check_tensor("q", q, (4,))
    if values_enabled():
        _check_quat_norm("q", q)
    # scale-invariant: rescaled so that |u| cannot underflow (q ~ 1e-30 in float32)
    return _rotvec_from_quat(_rescaled(q))


def _rotvec_from_quat(q: torch.Tensor) -> torch.Tensor:
    """quat_to_axis_angle without checks."""
    w = q[..., :1]
    u = q[..., 1:]
    n = torch.linalg.vector_norm(u, dim=-1, keepdim=True)  # zero gradient at 0, not NaN
    # |w| as w·sign(w) with sign(±0) = ±1: the derivative at w = +0 is the one-sided +1
    # (abs's would be 0), so the gradient at a rotation by π is that of the w > 0 side.
    sgn = torch.copysign(torch.ones_like(w), w)
    aw = w * sgn
    # 2 atan2(n, |w|)/n has no cancellation for n > 0; only n = 0 needs its limit 2/|w|.
    # Safe where: each discarded branch is evaluated at a harmless input (n = 1, |w| = 1),
    # so its backward never produces 0 · inf = NaN.
    zero = n == 0
    f = 2.0 * torch.atan2(n, aw) / torch.where(zero, torch.ones_like(n), n)
    f = torch.where(zero, 2.0 / torch.where(zero, aw, torch.ones_like(aw)), f)
    return u * (f * sgn)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation vectors from rotation matrices (angle in ``[0, π]``).

    Goes through :func:`matrix_to_quat` (robust branch selection), so rotations by π about
    any axis are exact and gradients are finite at the identity and at π. Matrices that
    are not rotations follow the package policy (:mod:`geo3d.rotations`): nearest
    rotation for ``det > 0``, ``ValueError`` for ``det <= 0`` or NaN/inf.

    Args:
        R: rotation matrices, shape :math:`(*, 3, 3)`.

    Returns:
        Rotation vectors, shape :math:`(*, 3)`.

    Raises:
        ValueError: wrong shape; (value checks on) non-finite ``R`` or ``det(R) <= 0``.

    Example:
        >>> matrix_to_axis_angle(torch.diag(torch.tensor([1.0, -1.0, -1.0])))
        tensor([3.1416, 0.0000, 0.0000])
    """
    check_tensor("R", R, (3, 3))
    q = _quat_from_rows(rotation_rows("R", R))
    return _rotvec_from_quat(q).view(*R.shape[:-2], 3)
