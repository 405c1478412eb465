"""Euler angles with ``scipy.spatial.transform.Rotation`` semantics."""

from __future__ import annotations

import math
import warnings

import torch

from geo3d.rotations._checks import check_finite, check_tensor, tracing, values_enabled
from geo3d.rotations._matrix_input import _tracks_derivative, rotation_rows
from geo3d.rotations._quat import _quat_from_rows, quat_to_matrix

__all__ = ["euler_to_matrix", "matrix_to_euler"]

_AXES = {"x": 0, "y": 1, "z": 2}


def _parse(convention: object) -> tuple[list[int], bool]:
    """Validate a scipy-style convention; return (axes, intrinsic)."""
    if not isinstance(convention, str) or len(convention) != 3:
        raise ValueError(
            "convention: expected 3 axis letters from 'xyz' (extrinsic) or 'XYZ' "
            f"(intrinsic), e.g. 'xyz' or 'ZYX', got {convention!r}"
        )
    if convention.islower() and all(c in "xyz" for c in convention):
        intrinsic = False
    elif convention.isupper() and all(c in "XYZ" for c in convention):
        intrinsic = True
    else:
        raise ValueError(
            "convention: expected 3 axis letters all from 'xyz' (extrinsic) or all from "
            f"'XYZ' (intrinsic), got {convention!r}"
        )
    axes = [_AXES[c] for c in convention.lower()]
    if axes[0] == axes[1] or axes[1] == axes[2]:
        raise ValueError(f"convention: expected consecutive axes to differ, got {convention!r}")
    return axes, intrinsic


def _elementary(axis: int, angle: torch.Tensor) -> list[torch.Tensor]:
    h = 0.5 * angle
    z = torch.zeros_like(h)
    q = [torch.cos(h), z, z, z]
    q[1 + axis] = torch.sin(h)
    return q


def _qmul(p: list[torch.Tensor], q: list[torch.Tensor]) -> list[torch.Tensor]:
    pw, px, py, pz = p
    qw, qx, qy, qz = q
    return [
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    ]


def euler_to_quat(angles: torch.Tensor, convention: str) -> torch.Tensor:
    """Quaternions from Euler angles (see :func:`euler_to_matrix`).

    Args:
        angles: radians, shape :math:`(*, 3)`.
        convention: e.g. ``"xyz"`` (extrinsic) or ``"ZYX"`` (intrinsic).

    Returns:
        Unit quaternions ``wxyz`` with ``w >= 0``, shape :math:`(*, 4)`.
    """
    axes, intrinsic = _parse(convention)
    check_tensor("angles", angles, (3,))
    if values_enabled():
        check_finite("angles", angles)
    a = angles.unbind(-1)
    q = _elementary(axes[0], a[0])
    for i in (1, 2):
        e = _elementary(axes[i], a[i])
        q = _qmul(q, e) if intrinsic else _qmul(e, q)
    out = torch.stack(q, dim=-1)
    return out * torch.copysign(torch.ones_like(out[..., :1]), out[..., :1])


def euler_to_matrix(angles: torch.Tensor, convention: str) -> torch.Tensor:
    """Rotation matrices from Euler angles, like ``Rotation.from_euler(convention, angles)``.

    Uppercase letters are intrinsic rotations (about the moving frame), lowercase letters
    extrinsic (about the fixed frame): ``"xyz"`` gives ``Rz(c) Ry(b) Rx(a)``, ``"XYZ"``
    gives ``Rx(a) Ry(b) Rz(c)``. All 12 axis sequences are supported both ways.

    Args:
        angles: radians ``(a, b, c)`` in the order of ``convention``, shape :math:`(*, 3)`.
        convention: three letters from ``xyz`` or from ``XYZ``, consecutive letters differ.

    Returns:
        Rotation matrices, shape :math:`(*, 3, 3)`.
    """
    return quat_to_matrix(euler_to_quat(angles, convention))


def _nz_hypot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """hypot with a zero (not NaN) gradient at (0, 0)."""
    s = a * a + b * b
    pos = s > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, s, torch.ones_like(s))), torch.zeros_like(s)
    )


def _safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 whose gradient is 0 (not NaN) at (0, 0); value atan2(0, 0) = 0 as in torch."""
    zero = (y == 0) & (x == 0)
    return torch.atan2(y, torch.where(zero, torch.ones_like(x), x))


def _euler_setup(convention: str) -> tuple[bool, bool, int, int, int, float]:
    """``(extrinsic, symmetric, i, j, k, sign)`` of Bernardes & Viollet's algorithm."""
    axes, intrinsic = _parse(convention)
    if intrinsic:
        axes = axes[::-1]
    i, j, k = axes
    symmetric = i == k
    if symmetric:
        k = 3 - i - j
    sign = float((i - j) * (j - k) * (k - i) // 2)
    return not intrinsic, symmetric, i, j, k, sign


def _euler_abcd(qw, qi, qj, qk, symmetric: bool, sign: float) -> tuple:
    if symmetric:
        return qw, qi, qj, qk * sign
    return qw - qj, qi + qk * sign, qj + qw, qk * sign - qi


_GIMBAL_EPS = 1e-7


def _euler_angles(half_sum, half_diff, mid, extrinsic: bool, symmetric: bool, sign: float):
    """The three angles (unwrapped) and the non-gimbal mask, from the half-angle sums.

    Bernardes & Viollet (2022), as implemented in scipy (including its gimbal-lock rule:
    the angle at index 2 is set to 0, the one at index 0 absorbs the rotation)."""
    case1 = mid.abs() <= _GIMBAL_EPS
    case2 = (mid - math.pi).abs() <= _GIMBAL_EPS
    case0 = ~(case1 | case2)
    a0 = torch.where(case1, 2.0 * half_sum, 2.0 * half_diff * (-1.0 if extrinsic else 1.0))
    first = half_sum - half_diff
    third = half_sum + half_diff
    if extrinsic:
        ang0 = torch.where(case0, first, a0)
        ang2 = torch.where(case0, third, 0.0)
    else:
        ang2 = torch.where(case0, first, 0.0)
        ang0 = torch.where(case0, third, a0)
        if not symmetric:
            ang0 = ang0 * sign
    if extrinsic and not symmetric:
        ang2 = ang2 * sign
    ang1 = mid if symmetric else mid - 0.5 * math.pi
    return ang0, ang1, ang2, case0


def quat_to_euler(q: torch.Tensor, convention: str, warn: bool = True) -> torch.Tensor:
    """Euler angles from quaternions (see :func:`matrix_to_euler`).

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero (any scale: the angles
            are those of ``q / |q|``).
        convention: as in :func:`euler_to_matrix`.
        warn: warn (like scipy) when gimbal lock is detected.

    Returns:
        Angles in radians, shape :math:`(*, 3)`.

    Raises:
        ValueError: wrong shape or convention; (value checks on) a zero or non-finite
            quaternion.
    """
    extrinsic, symmetric, i, j, k, sign = _euler_setup(convention)
    check_tensor("q", q, (4,))
    from geo3d.rotations._quat import _check_quat_norm

    _check_quat_norm("q", q)
    # scipy's xyzw layout: index 3 is the scalar part; ours is wxyz.
    a, b, c, d = _euler_abcd(q[..., 0], q[..., 1 + i], q[..., 1 + j], q[..., 1 + k],
                             symmetric, sign)
    if _tracks_derivative(q):
        # zero (not NaN) gradients at the (0, 0) points met at gimbal lock (reverse and
        # forward mode, torch.func included)
        half_sum = _safe_atan2(b, a)
        half_diff = _safe_atan2(d, c)
        mid = 2.0 * torch.atan2(_nz_hypot(c, d), _nz_hypot(a, b))
    else:
        half_sum = torch.atan2(b, a)
        half_diff = torch.atan2(d, c)
        mid = 2.0 * torch.atan2(torch.hypot(c, d), torch.hypot(a, b))
    ang0, ang1, ang2, case0 = _euler_angles(half_sum, half_diff, mid, extrinsic, symmetric,
                                            sign)
    if warn and not tracing() and bool((~case0).any()):
        warnings.warn(
            "Gimbal lock detected. Setting third angle to zero since it is not possible to "
            "uniquely determine all angles.",
            stacklevel=3,
        )
    out = torch.stack((ang0, ang1, ang2), dim=-1)
    return torch.remainder(out + math.pi, 2.0 * math.pi) - math.pi


def matrix_to_euler(R: torch.Tensor, convention: str, warn: bool = True) -> torch.Tensor:
    """Euler angles from rotation matrices, like ``Rotation.from_matrix(R).as_euler(convention)``.

    Same algorithm as scipy (quaternion-based, Bernardes & Viollet 2022) and the same
    angle ranges: every angle is wrapped to ``[-π, π)``; the second lies in ``[0, π]`` for
    symmetric sequences (e.g. ``"zxz"``; π itself reads -π after the wrap, as in scipy)
    and in ``[-π/2, π/2]`` otherwise. At gimbal lock
    (second angle within 1e-7 of its limits) the angle at index 2 is set to 0 and a
    ``UserWarning`` is emitted (disable with ``warn=False``), as scipy does.

    Args:
        R: rotation matrices, shape :math:`(*, 3, 3)`.
        convention: as in :func:`euler_to_matrix`.
        warn: emit the gimbal-lock warning.

    Returns:
        Angles in radians, shape :math:`(*, 3)`.

    Raises:
        ValueError: bad ``convention`` or shape; (value checks on) non-finite ``R`` or
            ``det(R) <= 0``. Other matrices are read as their nearest rotation (the policy
            of :mod:`geo3d.rotations`).

    Example:
        >>> matrix_to_euler(torch.eye(3), "xyz")
        tensor([0., 0., 0.])
    """
    _parse(convention)
    check_tensor("R", R, (3, 3))
    q = _quat_from_rows(rotation_rows("R", R)).view(*R.shape[:-2], 4)
    return quat_to_euler(q, convention, warn=warn)
