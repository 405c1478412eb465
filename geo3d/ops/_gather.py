"""Gather points by index."""

from __future__ import annotations

import torch

from geo3d._validation import shape_of, value_error

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
        shape :math:`(B, *S, *F)`, a new tensor (never a view of ``x``). ``x`` holds values
        (coordinates or features) and is not checked for NaN/inf: they are gathered as is.

    Raises:
        ValueError: ``x`` not a tensor with a point axis, ``idx`` not an integer tensor with
            ``x``'s batch size, or indices outside ``[-1, N)``.

    Example:
        >>> x = torch.arange(6.0).reshape(1, 3, 2)
        >>> gather_points(x, torch.tensor([[2, -1]])).tolist()
        [[[4.0, 5.0], [0.0, 0.0]]]
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise value_error("x", "a tensor of shape (B, N, *F)", shape_of(x))
    if not isinstance(idx, torch.Tensor) or idx.ndim < 1 or idx.shape[0] != x.shape[0]:
        raise value_error("idx", f"an integer tensor of shape ({x.shape[0]}, ...)", shape_of(idx))
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise value_error("idx", "an integer tensor", f"dtype {idx.dtype}")
    idx = idx.to(device=x.device, dtype=torch.long)
    n = x.shape[1]
    if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -1):
        raise value_error(
            "idx",
            f"values in [-1, {n}) (N = x.shape[1])",
            f"values in [{int(idx.min())}, {int(idx.max())}]",
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
