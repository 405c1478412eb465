"""Input validation and batching helpers shared by the point-cloud kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_points(name: str, t: object, dim: int | None = None) -> torch.Tensor:
    """Check that ``t`` is a floating tensor of shape ``(..., N, D)``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim < 2:
        raise ValueError(f"{name} must have shape (..., N, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.shape[-1] < 1:
        raise ValueError(
            f"{name} must have at least one coordinate (D >= 1), got shape {tuple(t.shape)}"
        )
    if dim is not None and t.shape[-1] != dim:
        raise ValueError(
            f"{name} must have last dimension D={dim} to match, got shape {tuple(t.shape)}"
        )
    return t


def _check_pair(x: torch.Tensor, y: torch.Tensor, xname: str = "x", yname: str = "y") -> None:
    """Check that two point sets ``(*L, N, D)`` and ``(*L, M, D)`` are compatible."""
    _check_points(xname, x)
    _check_points(yname, y, dim=x.shape[-1])
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            f"{xname} and {yname} must have the same batch shape (*L, ., D): "
            f"{xname} has shape {tuple(x.shape)}, {yname} has shape {tuple(y.shape)}"
        )
    if x.dtype != y.dtype:
        raise ValueError(
            f"{xname} and {yname} must have the same dtype, got {x.dtype} and {y.dtype}"
        )
    if x.device != y.device:
        raise ValueError(
            f"{xname} and {yname} must be on the same device, got {x.device} and {y.device}"
        )


def _check_lengths(
    name: str, lengths: torch.Tensor | None, batch_shape: torch.Size, n: int, device: torch.device
) -> torch.Tensor:
    """Validate ``lengths`` of shape ``batch_shape`` with values in ``[0, n]``.

    Returns the lengths flattened to ``(B,)`` as int64 on ``device`` (all ``n`` when None).
    """
    b = 1
    for s in batch_shape:
        b *= s
    if lengths is None:
        return torch.full((b,), n, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(lengths).__name__}")
    if lengths.shape != batch_shape:
        raise ValueError(
            f"{name} must have shape {tuple(batch_shape)} (the batch shape), "
            f"got shape {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {lengths.dtype}")
    lengths = lengths.to(device=device, dtype=torch.long).reshape(b)
    if lengths.numel() > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > n:
            raise ValueError(f"{name} values must lie in [0, {n}], got values in [{lo}, {hi}]")
    return lengths


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _sqdist_cols(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`_sqdist_exact` on per-coordinate tensors ``a[d]``, ``b[d]`` (broadcastable).

    Same operations in the same order, so bitwise the same values, but the coordinates can be
    contiguous tensors (much faster than strided slices of ``(..., D)`` tensors).
    """
    diff = a[0] - b[0]
    acc = diff * diff
    for d in range(1, len(a)):
        diff = a[d] - b[d]
        acc = acc + diff * diff
    return acc


def _sqdist_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance ``sum_d (a_d - b_d)^2`` with a fixed summation order.

    ``a`` and ``b`` broadcast against each other, shapes ``(..., D)``. For D <= 8 the sum is
    accumulated coordinate by coordinate (d = 0, 1, ..., D-1) with elementwise operations
    only, so the value for a given pair of points is bitwise identical whatever the shapes of
    the tensors it is computed in. This is *the* distance that :func:`knn` ranks by. For D > 8
    (feature spaces) the differences are materialised and reduced with ``sum(-1)`` over the
    contiguous last axis instead (far fewer kernel launches; same reduction order for a
    given D).
    """
    if a.shape[-1] > 8:
        diff = a - b
        return (diff * diff).sum(-1)
    return _sqdist_cols(a.unbind(-1), b.unbind(-1))
