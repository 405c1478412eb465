"""Chamfer distance between point sets, exact and memory bounded (through :func:`knn`)."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

from geo3d._validation import value_error

from ._checks import _check_finite_points, _check_lengths, _check_pair, _check_positive_int
from ._knn import _BACKENDS, Backend, _nearest_both, knn

__all__ = ["ChamferPerPoint", "chamfer_distance"]

Reduction = Literal["mean", "sum"]


class ChamferPerPoint(NamedTuple):
    """Per-point nearest-neighbour terms of :func:`chamfer_distance`.

    Attributes:
        dist_xy: distance from every ``x`` point to its nearest ``y`` point (squared when
            ``squared=True``), shape :math:`(*, N)`; 0 for padded points.
        idx_xy: index in ``y`` of that nearest point, shape :math:`(*, N)`; -1 for padded
            points (and when ``y`` has no valid point). Ties go to the lower index, except
            for ``chamfer_distance(x, x)`` (``y`` is ``x``), where each point is its own
            nearest point, as in :func:`knn`.
        dist_yx: the same from ``y`` to ``x``, shape :math:`(*, M)` (None if
            ``single_directional``).
        idx_yx: shape :math:`(*, M)` (None if ``single_directional``).
    """

    dist_xy: torch.Tensor
    idx_xy: torch.Tensor
    dist_yx: torch.Tensor | None
    idx_yx: torch.Tensor | None


def _safe_sqrt(d: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not infinite) gradient at 0."""
    pos = d > 0
    return torch.where(pos, torch.where(pos, d, 1).sqrt(), 0)


def _point_reduce(d: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    s = d.sum(-1)
    if how == "sum":
        return s
    return s / valid.sum(-1).clamp(min=1).to(d.dtype)


def chamfer_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
    squared: bool = True,
    reduction: Reduction | None = "mean",
    point_reduction: Reduction | None = "mean",
    return_per_point: bool = False,
    *,
    single_directional: bool = False,
    backend: Backend = "auto",
    chunk_size: int | None = None,
):
    r"""Chamfer distance between two (batches of) point sets.

    Per batch element, with :math:`d(p, S) = \min_{q \in S} \|p - q\|^2` (``squared=True``) or
    :math:`\min_{q \in S} \|p - q\|` (``squared=False``):

    .. math:: \mathrm{CD}(X, Y) = \mathop{\mathrm{red}}_{p \in X} d(p, Y)
              + \mathop{\mathrm{red}}_{q \in Y} d(q, X)

    where red is the mean (``point_reduction="mean"``, the default) or the sum. The defaults
    give pytorch3d's ``chamfer_distance`` convention (sum of the two mean squared nearest
    distances), the one used by the shape-assembly metric. Only the valid points (given by
    the lengths) enter; a mean over zero points is 0 (and so is ``reduction="mean"`` over an
    empty batch), and a point with no valid point on the other side has distance ``inf``. Nearest neighbours are exact and found with bounded
    memory through :func:`knn` (never an N x M matrix). Differentiable w.r.t. ``x`` and
    ``y``; with ``squared=False`` the gradient at coincident points is 0 (not NaN).

    Args:
        x: points, shape :math:`(*, N, D)`.
        y: points, shape :math:`(*, M, D)` (same batch shape, dtype, device).
        x_lengths: valid points of ``x`` per batch element, shape :math:`(*)` (None: all N).
        y_lengths: valid points of ``y``, shape :math:`(*)` (None: all M).
        squared: squared distances (default) or Euclidean ones.
        reduction: over the batch: ``"mean"`` (default), ``"sum"`` or None (shape
            :math:`(*)`).
        point_reduction: over the points: ``"mean"`` (default), ``"sum"``, or None, which
            returns the per-point terms ``(dist_xy (*, N), dist_yx (*, M))`` (padded entries 0)
            and requires ``reduction=None``.
        return_per_point: also return a :class:`ChamferPerPoint` with the per-point nearest
            distances and indices both ways.
        single_directional: only the ``x -> y`` term.
        backend, chunk_size: passed to :func:`knn`.

    Returns:
        The loss: a scalar (``reduction`` "mean"/"sum"), shape :math:`(*)` (None), or the
        tuple ``(dist_xy, dist_yx)`` (``point_reduction=None``; ``dist_yx`` None if
        single-directional); followed by a :class:`ChamferPerPoint` when
        ``return_per_point``: ``(loss, per_point)``.

    Raises:
        ValueError: for bad shapes/dtypes/devices of ``x`` and ``y``, lengths of the wrong
            shape or range, unknown reductions or backend, and (when value checks are on, see
            :func:`geo3d.rotations.set_value_checks`) NaN/inf in a valid point of ``x`` or
            ``y``; padded points are not checked.
    """
    _check_pair(x, y)
    if reduction not in ("mean", "sum", None):
        raise value_error("reduction", "'mean', 'sum' or None", repr(reduction))
    if point_reduction not in ("mean", "sum", None):
        raise value_error("point_reduction", "'mean', 'sum' or None", repr(point_reduction))
    if point_reduction is None and reduction is not None:
        raise value_error(
            "reduction", "None with point_reduction=None (per-point terms)", repr(reduction)
        )
    batch_shape = x.shape[:-2]
    n, m, dim = x.shape[-2], y.shape[-2], x.shape[-1]
    xl = _check_lengths("x_lengths", x_lengths, batch_shape, n, x.device)
    yl = _check_lengths("y_lengths", y_lengths, batch_shape, m, x.device)
    if chunk_size is not None:
        chunk_size = _check_positive_int("chunk_size", chunk_size)
    if backend not in _BACKENDS:
        raise value_error("backend", f"one of {_BACKENDS}", repr(backend))
    nb = math.prod(batch_shape)
    xb, yb = x.reshape(nb, n, dim), y.reshape(nb, m, dim)
    _check_finite_points("x", xb, xl)
    _check_finite_points("y", yb, yl)
    vx = torch.arange(n, device=x.device)[None] < xl[:, None]
    vy = torch.arange(m, device=x.device)[None] < yl[:, None]
    same = y is x  # then every point is its own nearest point (as in knn(x, x))
    if same:
        yb = xb
    if single_directional:
        dxy, ixy = knn(xb, yb, 1, xl, yl, backend=backend, chunk_size=chunk_size)
        dxy, ixy = dxy[..., 0], ixy[..., 0]
        dyx = iyx = None
    else:
        dxy, ixy, dyx, iyx = _nearest_both(xb, yb, xl, yl, backend, chunk_size, same)

    def finish(d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        d = torch.where(valid, d, 0)  # padded points: 0 (their inf carries no gradient)
        return d if squared else _safe_sqrt(d)

    dxy = finish(dxy, vx)
    if dyx is not None:
        dyx = finish(dyx, vy)

    def unflat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.reshape(*batch_shape, t.shape[-1])

    if point_reduction is None:
        loss = (unflat(dxy), unflat(dyx))
    else:
        loss = _point_reduce(dxy, vx, point_reduction)
        if dyx is not None:
            loss = loss + _point_reduce(dyx, vy, point_reduction)
        loss = loss.reshape(batch_shape)
        if reduction == "mean":
            # mean over an empty batch: 0 (like a mean over zero points), not NaN
            loss = loss.sum() / max(loss.numel(), 1)
        elif reduction == "sum":
            loss = loss.sum()
    if return_per_point:
        return loss, ChamferPerPoint(unflat(dxy), unflat(ixy), unflat(dyx), unflat(iyx))
    return loss
