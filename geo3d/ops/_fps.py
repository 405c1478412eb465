"""Farthest point sampling."""

from __future__ import annotations

import math

import torch

from geo3d._validation import value_error

from ._checks import (
    _check_finite_points,
    _check_lengths,
    _check_points,
    _check_positive_int,
    _sqdist_cols,
    _sqdist_exact,
)

__all__ = ["farthest_point_sampling"]


def farthest_point_sampling(
    x: torch.Tensor,
    n: int,
    lengths: torch.Tensor | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Farthest point sampling: greedily pick the point farthest from those already picked.

    Starts at index 0 (or, with ``random_start``, at a uniformly drawn valid index using
    ``generator``); each next index maximises the squared distance (same formula as
    :func:`knn`) to the nearest already selected point, ties to the lowest index. Time
    O(n * N * D), extra memory O(N) per batch element.

    Args:
        x: points, shape :math:`(*, N, D)`.
        n: number of points to select, ``>= 1``.
        lengths: valid points per batch element, shape :math:`(*)` (None: all N).
        random_start: draw the first index uniformly among the valid points.
        generator: random generator for the start index (only used with ``random_start``).

    Returns:
        indices, shape :math:`(*, n)`, int64. When ``n`` exceeds the number of valid points
        the selection holds every valid point once and the rest is filled with -1.

    Raises:
        ValueError: for a badly shaped or non-floating ``x``, ``n < 1``, bad ``lengths`` or
            ``generator``, and (when value checks are on, see
            :func:`geo3d.rotations.set_value_checks`) NaN/inf in a valid point of ``x``.
    """
    _check_points("x", x)
    n = _check_positive_int("n", n)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise value_error("generator", "a torch.Generator or None", type(generator).__name__)
    batch_shape = x.shape[:-2]
    npts, dim = x.shape[-2], x.shape[-1]
    lens = _check_lengths("lengths", lengths, batch_shape, npts, x.device)
    xb = x.detach().reshape(math.prod(batch_shape), npts, dim)
    _check_finite_points("x", xb, lens)
    b = xb.shape[0]
    dev = x.device
    out = torch.full((b, n), -1, dtype=torch.long, device=dev)
    if b == 0 or npts == 0:
        return out.reshape(*batch_shape, n)
    valid = torch.arange(npts, device=dev)[None] < lens[:, None]
    if random_start:
        u = torch.rand(b, generator=generator, device=generator.device if generator else "cpu")
        start = (u.to(dev, torch.float64) * lens.to(torch.float64)).floor().long()
        start = torch.minimum(start, (lens - 1).clamp(min=0))
    else:
        start = torch.zeros(b, dtype=torch.long, device=dev)
    # -inf for padding: never picked; +inf for valid points not yet covered
    mind = torch.where(valid, math.inf, -math.inf).to(x.dtype)
    ar = torch.arange(b, device=dev)
    cur = start
    nsel = torch.minimum(lens, torch.tensor(n, device=dev))
    cols = list(xb.movedim(-1, 0).contiguous()) if dim <= 8 else None  # D x (B, N)
    for t in range(min(n, npts)):
        active = t < nsel
        out[:, t] = torch.where(active, cur, -1)
        if cols is not None:
            d = _sqdist_cols(cols, [c[ar, cur][:, None] for c in cols])
        else:
            d = _sqdist_exact(xb, xb[ar, cur][:, None, :])
        mind = torch.minimum(mind, torch.where(valid, d, -math.inf))
        mind[ar, cur] = -math.inf  # selected: never again (even with duplicate points)
        cur = torch.argmax(mind, dim=1)  # first maximal index on ties
    return out.reshape(*batch_shape, n)
