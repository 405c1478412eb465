"""Gather points by index."""

from __future__ import annotations

import torch

__all__ = ["gather_points"]


def gather_points(x: torch.Tensor, idx: torch.Tensor, fill_value: float = 0.0) -> torch.Tensor:
    r"""Gather rows of ``x`` along its point axis, per batch element.

    ``out[b, i1, ..., f] = x[b, idx[b, i1, ...], f]``. Negative indices (the -1 fill of
    :func:`knn` and :func:`farthest_point_sampling`) give ``fill_value``. Differentiable
    w.r.t. ``x``.

    Args:
        x: values, shape :math:`(B, N, *F)` (e.g. points ``(B, N, 3)``, features ``(B, N, C)``).
        idx: indices in ``[-1, N)``, shape :math:`(B, *S)` (e.g. ``(B, n)`` or ``(B, N, k)``).
        fill_value: value for negative indices.

    Returns:
        shape :math:`(B, *S, *F)`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, N, *F), got {shape}")
    if not isinstance(idx, torch.Tensor) or idx.ndim < 1 or idx.shape[0] != x.shape[0]:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be an integer tensor of shape ({x.shape[0]}, ...), got {shape}")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"idx must be an integer tensor, got dtype {idx.dtype}")
    idx = idx.to(device=x.device, dtype=torch.long)
    n = x.shape[1]
    if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -1):
        raise ValueError(
            f"idx values must lie in [-1, {n}) (N = x.shape[1]), got values in "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    b = x.shape[0]
    feat = x.shape[2:]
    flat = idx.reshape(b, -1)
    neg = flat < 0
    xf = x.reshape(b, n, -1)
    out = xf.gather(1, flat.clamp(min=0)[..., None].expand(-1, -1, xf.shape[-1]))
    if bool(neg.any()):
        out = out.masked_fill(neg[..., None], fill_value)
    return out.reshape(*idx.shape, *feat)
