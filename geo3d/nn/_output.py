"""Common encoder output container and mask helpers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geo3d._validation import check_finite

__all__ = ["EncoderOutput"]


@dataclass
class EncoderOutput:
    """What every geo3d point-cloud encoder returns.

    Attributes:
        invariant: global invariant features, shape :math:`(B, C_{inv})`.
        equivariant: global equivariant vector features in xyz order, shape
            :math:`(B, C_{eq}, 3)` (rotate as ``v @ R.T`` / ``R v`` per channel), or ``None``
            for encoders without equivariant outputs.
        point_features: per-point invariant features, shape :math:`(B, N, C_{pt})`, or
            ``None``. Rows of padded points are zero.
        point_equivariant: per-point equivariant vector features, shape
            :math:`(B, N, C_{peq}, 3)`, or ``None``. Rows of padded points are zero.

    A cloud without any valid point gives all-zero outputs (never NaN). Every field is a new
    tensor (never a view of the input points).
    """

    invariant: Tensor
    equivariant: Tensor | None = None
    point_features: Tensor | None = None
    point_equivariant: Tensor | None = None


def check_points_mask(points: Tensor, mask: Tensor | None) -> Tensor:
    """Validate ``points (B, N, 3)`` and ``mask (B, N)``; return a bool mask (all valid if None).

    Valid points must be finite (a ``ValueError`` naming ``points`` otherwise, when value
    checks are on: :func:`geo3d.rotations.set_value_checks`); padded ones are not checked.
    """
    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points: expected shape (B, N, 3), got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"points: expected a floating point tensor, got dtype {points.dtype}")
    B, N, _ = points.shape
    if N == 0:
        raise ValueError("points: expected at least one point, got N = 0")
    if mask is None:
        check_finite("points", points)
        return torch.ones(B, N, dtype=torch.bool, device=points.device)
    if not isinstance(mask, Tensor) or mask.shape != (B, N):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected shape (B, N) = {(B, N)}, got {shape}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected dtype torch.bool (True = valid), got {mask.dtype}")
    mask = mask.to(points.device)
    check_finite("points", points, mask)  # padded points may hold anything
    return mask


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only entries where ``mask`` is True.

    ``mask`` broadcasts against ``x``; padded entries never enter the result (not even as
    NaN/inf). Slices without any valid entry give 0.
    """
    m = mask.to(x.dtype)
    num = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim)
    den = m.expand_as(x).sum(dim) if m.shape != x.shape else m.sum(dim)
    return num / den.clamp_min(1.0)


def center_points(points: Tensor, mask: Tensor) -> Tensor:
    """Subtract the masked centroid of ``points (B, N, 3)``; padded points become 0.

    Computed in float64 and cast back (float32 clouds far from the origin keep their shape).
    """
    wide = points.to(torch.float64) if points.dtype in (
        torch.float16, torch.bfloat16, torch.float32) else points
    wide = torch.where(mask[..., None], wide, torch.zeros((), dtype=wide.dtype, device=wide.device))
    c = masked_mean(wide, mask[..., None], dim=1)  # (B, 3)
    out = (wide - c[:, None, :]).to(points.dtype)
    return torch.where(mask[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def centring_error(points: Tensor, mask: Tensor) -> Tensor:
    """Relative rounding error ``(B,)`` of centred ``points (B, N, 3)``: the dtype's eps times
    ``max(1, |raw| / |centred|)`` (largest norms over valid points). A cloud stored far from
    the origin keeps absolute errors of ``eps * |raw|`` after centring; the tie tolerance of
    :func:`geo3d.nn.knn_neighborhood` must cover them."""
    eps = torch.finfo(points.dtype).eps
    with torch.no_grad():
        p = zero_padded(points.detach(), mask)
        raw = p.norm(dim=-1).amax(1)
        cen = center_points(p, mask).norm(dim=-1).amax(1)
        amp = torch.where(cen > 0, raw / torch.where(cen > 0, cen, 1), 1)
        return eps * amp.clamp(min=1)


def zero_padded(points: Tensor, mask: Tensor) -> Tensor:
    """Replace padded points ``(B, N, 3)`` by zeros so that their values cannot leak."""
    return torch.where(mask[..., None], points, torch.zeros((), dtype=points.dtype, device=points.device))


def zero_rows(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the rows of padded points: ``x (B, N, ...)``, ``mask (B, N)``."""
    m = mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
