"""SE(3): exponential and logarithm maps (ξ = (v, ω), translation first), inverse, action."""

from __future__ import annotations

import torch

from geo3d.rotations._axis_angle import (
    _SMALL,
    _rotvec_from_quat,
    axis_angle_to_matrix,
)
from geo3d.rotations._checks import check_finite, check_pair, check_tensor, values_enabled
from geo3d.rotations._matrix_input import as_rotation
from geo3d.rotations._quat import _quat_from_rotation

__all__ = ["se3_exp", "se3_log", "se3_inverse", "se3_apply"]


def _safe_theta(t2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    small = t2 < _SMALL
    return small, torch.sqrt(torch.where(small, torch.ones_like(t2), t2))


def _homogeneous(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    top = torch.cat((R, t.unsqueeze(-1)), dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat((top, bottom), dim=-2)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Exponential map se(3) → SE(3).

    ``T = [[R, V v], [0, 1]]`` with ``R = exp([ω]×)``, ``V = I + b [ω]× + c [ω]×²``,
    ``b = (1 - cos θ)/θ²``, ``c = (θ - sin θ)/θ³`` (Taylor series near θ = 0).

    Args:
        xi: twists ``(v, ω)`` (translation first), shape :math:`(*, 6)`.

    Returns:
        Homogeneous transforms, shape :math:`(*, 4, 4)`.
    """
    check_tensor("xi", xi, (6,))
    if values_enabled():
        check_finite("xi", xi)
    v, w = xi[..., :3], xi[..., 3:]
    R = axis_angle_to_matrix(w)
    t2 = (w * w).sum(-1, keepdim=True)
    small, th = _safe_theta(t2)
    b_big = 2.0 * (torch.sin(0.5 * th) / th) ** 2
    c_big = (th - torch.sin(th)) / (th * th * th)
    b_sm = 0.5 - t2 / 24.0 * (1.0 - t2 / 30.0 * (1.0 - t2 / 56.0))
    c_sm = (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0))) / 6.0
    b = torch.where(small, b_sm, b_big)
    c = torch.where(small, c_sm, c_big)
    wxv = torch.linalg.cross(w, v)
    wwxv = torch.linalg.cross(w, wxv)
    t = v + b * wxv + c * wwxv
    return _homogeneous(R, t)


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """Logarithm map SE(3) → se(3) (rotation angle in ``[0, π]``).

    The rotation block follows the policy of :mod:`geo3d.rotations` (nearest rotation for
    ``det > 0``, ``ValueError`` for ``det <= 0`` or NaN/inf). Gradients are finite at the
    identity and at rotations by π.

    Args:
        T: homogeneous transforms, shape :math:`(*, 4, 4)` (the last row is ignored).

    Returns:
        Twists ``(v, ω)``, shape :math:`(*, 6)`.

    Raises:
        ValueError: wrong shape; (value checks on) non-finite ``T`` or a rotation block
            with ``det <= 0``.

    Example:
        >>> se3_log(torch.eye(4))
        tensor([0., 0., 0., 0., 0., 0.])
    """
    check_tensor("T", T, (4, 4))
    if values_enabled():
        check_finite("T", T[..., :3, :])
    R, t = as_rotation("T", T[..., :3, :3], "rotation blocks T[..., :3, :3]"), T[..., :3, 3]
    w = _rotvec_from_quat(_quat_from_rotation(R))
    t2 = (w * w).sum(-1, keepdim=True)
    small, th = _safe_theta(t2)
    h = 0.5 * th
    # V⁻¹ = I - ½[ω]× + e [ω]×², e = (1 - (θ/2) cot(θ/2)) / θ²
    e_big = (1.0 - h * torch.cos(h) / torch.sin(h)) / torch.where(small, torch.ones_like(t2), t2)
    e_sm = 1.0 / 12.0 + t2 * (1.0 / 720.0 + t2 * (1.0 / 30240.0 + t2 / 1209600.0))
    e = torch.where(small, e_sm, e_big)
    wxt = torch.linalg.cross(w, t)
    v = t - 0.5 * wxt + e * torch.linalg.cross(w, wxt)
    return torch.cat((v, w), dim=-1)


def se3_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms: ``[[Rᵀ, -Rᵀ t], [0, 1]]``.

    Args:
        T: homogeneous transforms, shape :math:`(*, 4, 4)`.

    Returns:
        Shape :math:`(*, 4, 4)`.
    """
    check_tensor("T", T, (4, 4))
    if values_enabled():
        check_finite("T", T[..., :3, :])
    Rt = as_rotation("T", T[..., :3, :3], "rotation blocks T[..., :3, :3]").transpose(-1, -2)
    t = -(Rt @ T[..., :3, 3:]).squeeze(-1)
    return _homogeneous(Rt, t)


def se3_apply(T: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply rigid transforms to points: ``x' = R x + t``.

    Args:
        T: homogeneous transforms, shape :math:`(*, 4, 4)`.
        x: points, shape :math:`(*, 3)`; the batch dims of ``T`` and ``x`` broadcast
            (e.g. ``T`` of shape ``(B, 1, 4, 4)`` with ``x`` of shape ``(B, N, 3)``).

    Returns:
        Transformed points, shape :math:`(*, 3)` (broadcast).
    """
    check_tensor("T", T, (4, 4))
    check_tensor("x", x, (3,))
    check_pair("T", T, 2, "x", x, 1)
    R, t = T[..., :3, :3], T[..., :3, 3]
    return (R @ x.unsqueeze(-1)).squeeze(-1) + t
