"""Input validation and batching helpers shared by the point-cloud kernels.

Errors follow the package style ``f"{name}: expected {what}, got {actual}"`` (built by
:func:`geo3d._validation.value_error`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geo3d._validation import check_finite, value_error


def _check_points(name: str, t: object, dim: int | None = None) -> torch.Tensor:
    """Check that ``t`` is a floating tensor of shape ``(..., N, D)``."""
    if not isinstance(t, torch.Tensor):
        raise value_error(name, "a torch.Tensor", type(t).__name__)
    if t.ndim < 2:
        raise value_error(name, "shape (..., N, D)", f"shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise value_error(name, "a floating-point tensor", f"dtype {t.dtype}")
    if t.shape[-1] < 1:
        raise value_error(name, "at least one coordinate (D >= 1)", f"shape {tuple(t.shape)}")
    if dim is not None and t.shape[-1] != dim:
        raise value_error(name, f"last dimension D = {dim} (to match)", f"shape {tuple(t.shape)}")
    return t


def _check_pair(x: torch.Tensor, y: torch.Tensor, xname: str = "x", yname: str = "y") -> None:
    """Check that two point sets ``(*L, N, D)`` and ``(*L, M, D)`` are compatible."""
    _check_points(xname, x)
    _check_points(yname, y, dim=x.shape[-1])
    if x.shape[:-2] != y.shape[:-2]:
        raise value_error(
            yname,
            f"the batch shape of {xname} {tuple(x.shape[:-2])} (shape (*L, M, D))",
            f"shape {tuple(y.shape)}",
        )
    if x.dtype != y.dtype:
        raise value_error(yname, f"dtype {x.dtype} (the dtype of {xname})", f"dtype {y.dtype}")
    if x.device != y.device:
        raise value_error(yname, f"device {x.device} (the device of {xname})", f"{y.device}")


def _check_finite_points(name: str, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
    """ValueError if a valid point of ``x (B, N, D)`` (rows < ``lengths (B,)``) is NaN/inf.

    Padded rows are not checked. Skipped with value checks off (see
    :func:`geo3d.rotations.set_value_checks`), under ``torch.compile`` and ``torch.vmap``.
    """
    valid = None
    if lengths is not None:
        valid = torch.arange(x.shape[-2], device=x.device)[None] < lengths[:, None]
    check_finite(name, x, valid)


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
        raise value_error(name, "a torch.Tensor or None", type(lengths).__name__)
    if lengths.shape != batch_shape:
        raise value_error(
            name, f"shape {tuple(batch_shape)} (the batch shape)", f"shape {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise value_error(name, "an integer tensor", f"dtype {lengths.dtype}")
    lengths = lengths.to(device=device, dtype=torch.long).reshape(b)
    if lengths.numel() > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > n:
            raise value_error(name, f"values in [0, {n}]", f"values in [{lo}, {hi}]")
    return lengths


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise value_error(name, f"an int >= {minimum}", repr(value))
    if value < minimum:
        raise value_error(name, f"an int >= {minimum}", value)
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
