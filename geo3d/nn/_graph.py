"""kNN neighbourhoods with padding masks, on top of :func:`geo3d.ops.knn`.

:func:`knn_neighborhood` is the graph builder of the equivariant encoders: it treats
distances that agree up to rounding as ties and shares the last neighbour slots among all
tied points, so the neighbourhood is a function of the (rounded) distances only, never of
the point order or of last-bit rounding differences between a cloud and its rotated copy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from geo3d._validation import check_finite, shape_of, value_error

__all__ = ["Neighborhood", "knn_neighborhood", "masked_knn"]


def _check_x_k_mask(x: object, k: object, mask: object) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise value_error("x", "a floating tensor of shape (B, N, D)", shape_of(x))
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise value_error("k", "a positive integer", repr(k))
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != x.shape[:2]:
            raise value_error("mask", f"shape (B, N) = {tuple(x.shape[:2])}", shape_of(mask))
        if mask.dtype != torch.bool:
            raise value_error("mask", "dtype torch.bool (True = valid)", mask.dtype)


def _valid_first(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Valid points moved to the front (stable): ``(xs, lengths, perm)``; perm None if dense."""
    B, N, _ = x.shape
    if mask is None or bool(mask.all()):
        return x, torch.full((B,), N, dtype=torch.long, device=x.device), None
    mask = mask.to(x.device)
    perm = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, N)
    xs = torch.gather(x, 1, perm.unsqueeze(-1).expand_as(x))
    return xs, mask.sum(dim=1), perm


def _to_original(idx_s: Tensor, perm: Tensor) -> Tensor:
    """Indices ``(B, N, K)`` in the valid-first order -> indices and rows of the input order."""
    B, N, K = idx_s.shape
    idx_o = torch.gather(perm, 1, idx_s.reshape(B, N * K)).view(B, N, K)
    inv_perm = torch.argsort(perm, dim=1)
    return torch.gather(idx_o, 1, inv_perm.unsqueeze(-1).expand(B, N, K))


def masked_knn(x: Tensor, k: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """k nearest neighbours of every point among the valid points of its own cloud.

    Padded points (``mask`` False) are never neighbours. Each point is its own first
    neighbour (distance 0), also when it has duplicates. Other ties go to the lower index
    (of the valid points in input order), as in :func:`geo3d.ops.knn`: so the neighbourhood
    of a point with several candidates at its k-th distance depends on the point order and,
    for a rotated copy of the cloud, on last-bit rounding. Equivariant modules use
    :func:`knn_neighborhood` instead. When a cloud has fewer than ``k`` valid points the
    missing slots are flagged in the returned neighbour mask and their index points at the
    query itself.

    Args:
        x: features to measure distances in, shape :math:`(B, N, D)`.
        k: number of neighbours (clipped to ``N``).
        mask: bool, shape :math:`(B, N)`, True = valid; None = all valid.

    Returns:
        ``(idx, nbr_mask)``: long indices into the N axis, shape :math:`(B, N, k')` with
        ``k' = min(k, N)``, and bool :math:`(B, N, k')`, True where the slot is a real
        neighbour of a valid query point.

    Raises:
        ValueError: ``x`` not a floating ``(B, N, D)`` tensor, ``k`` not a positive int,
            ``mask`` not bool of shape ``(B, N)``, and (with value checks on, see
            :func:`geo3d.rotations.set_value_checks`) NaN/inf in a valid point of ``x``.

    Example:
        >>> x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]]])
        >>> masked_knn(x, 2)[0].tolist()
        [[[0, 1], [1, 0], [2, 0]]]
    """
    _check_x_k_mask(x, k, mask)
    check_finite("x", x, mask)
    return _masked_knn(x, k, mask)


def _masked_knn(x: Tensor, k: int, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    from geo3d.ops import knn  # geo3d.ops is a lower layer; imported here to keep import light

    B, N, _ = x.shape
    kk = min(int(k), N)
    if B == 0:  # empty batch: empty graph (geo3d.ops.knn cannot reshape 0 rows)
        return (torch.zeros(0, N, kk, dtype=torch.long, device=x.device),
                torch.zeros(0, N, kk, dtype=torch.bool, device=x.device))
    x = x.detach()
    xs, lengths, perm = _valid_first(x, mask)
    _, idx_s = knn(xs, xs, kk, x_lengths=lengths, y_lengths=lengths)  # self first
    if perm is None:
        return idx_s, torch.ones(B, N, kk, dtype=torch.bool, device=x.device)
    slot_ok = torch.arange(kk, device=x.device).view(1, 1, kk) < lengths.view(B, 1, 1)
    idx_s = torch.where(slot_ok, idx_s, torch.zeros_like(idx_s)).clamp(0, N - 1)
    idx = _to_original(idx_s, perm)
    nbr_mask = slot_ok.expand(B, N, kk) & mask.to(x.device).unsqueeze(-1)
    self_idx = torch.arange(N, device=x.device).view(1, N, 1).expand(B, N, kk)
    return torch.where(nbr_mask, idx, self_idx), nbr_mask


class Neighborhood(NamedTuple):
    """Result of :func:`knn_neighborhood` (a tuple: ``idx, mask, weight = ...`` works).

    Attributes:
        idx: neighbour indices into the N axis, shape :math:`(B, N, K)`, int64, ``K >= k'``
            (more slots where points tie at the k-th distance); unused slots point at the
            query itself.
        mask: bool :math:`(B, N, K)`, True for the neighbours of valid query points.
        weight: :math:`(B, N, K)` in the dtype of ``x``: 1 for every neighbour strictly
            closer than the k-th distance (and for the point itself), ``(k' - t) / s`` for
            each of the ``s`` points tied at the k-th distance when ``t`` points are
            strictly closer, 0 on unused slots; every valid row sums to
            ``min(k', valid points)``.
    """

    idx: Tensor
    mask: Tensor
    weight: Tensor


def knn_neighborhood(
    x: Tensor, k: int, mask: Tensor | None = None, *, rtol: float | None = None,
    input_error: Tensor | float | None = None,
) -> Neighborhood:
    r"""k-nearest-neighbour sets that are symmetric under ties (for equivariant modules).

    A kNN graph that breaks ties by index is not equivariant: on a grid-like cloud (voxel
    downsampling, depth sensors) many points are exactly equidistant, the distances of a
    rotated copy differ from them in the last bits, and the choice among the tied points at
    the k-th distance flips. Here, for every valid query :math:`i` with squared distances
    :math:`d_{ij}` to the valid points of its cloud and :math:`d_k` its k-th smallest
    (:math:`k' = \min(k, N)`; the query itself always first):

    * distances are *tied* with :math:`d_k` when :math:`|d_{ij} - d_k| \le \tau`,
      :math:`\tau = 64\,(\epsilon\, d_k + \delta\, r \sqrt{d_k}) + \mathrm{rtol}\, d_k`,
      where :math:`\epsilon` is the dtype's machine epsilon, :math:`r` the largest norm of
      a valid point of the cloud and :math:`\delta` the relative rounding error already in
      ``x`` (``input_error``, default :math:`\epsilon`): the first term bounds, with a
      wide margin, how much :math:`d_{ij}` changes when the inputs are rounded differently
      (a rotated or translated copy: errors of order :math:`\delta r` in the points, times
      :math:`2\sqrt{d}`, plus the rounding of the sum); ``rtol`` (default 0) widens the
      ties if needed. Exact duplicates are always tied (distance exactly 0);
    * the :math:`t` points strictly closer than :math:`d_k - \tau_i` (and the query itself)
      are neighbours with weight 1; the :math:`s` tied points are *all* neighbours, each with
      weight :math:`(k' - t)/s`.

    Guarantee: the neighbour set and weights of a point depend only on the multiset of its
    distances grouped by the tolerance, never on the point order (permutation-equivariant,
    duplicates included) and not on rounding below :math:`\tau`; so a module that pools
    neighbours by weighted mean (or by a max over the set) is exactly equivariant on grids
    and duplicates too. Only distances that differ by about :math:`\tau` (neither equal
    nor clearly apart) can still flip between "tied" and "strictly closer". Without ties the
    result is the ordinary kNN with unit weights (``K = k'``). The float32 tolerance covers
    the rounding of input coordinates, but not always that of features computed by many
    layers (dynamic feature-space graphs): there, exact equivariance is a float64 property.

    Args:
        x: features to measure distances in, shape :math:`(B, N, D)` (e.g. coordinates).
        k: neighbours per point, including the point itself (clipped to ``N``).
        mask: bool, shape :math:`(B, N)`, True = valid; None = all valid. Padded points are
            never neighbours and their rows are fully masked.
        rtol: extra relative tie tolerance (default 0).
        input_error: relative rounding error already present in ``x``, a float or one
            value per cloud, shape :math:`(B,)` (default: the dtype's eps). A cloud centred
            after being stored far from the origin carries errors of
            ``eps * |raw| / |centred|``; the encoders pass that.

    Returns:
        :class:`Neighborhood` ``(idx, mask, weight)``, each of shape :math:`(B, N, K)`.

    Raises:
        ValueError: ``x`` not a floating ``(B, N, D)`` tensor, ``k`` not a positive int,
            ``mask`` not bool of shape ``(B, N)``, negative ``rtol``, and (with value checks
            on, see :func:`geo3d.rotations.set_value_checks`) NaN/inf in a valid point.

    Example:
        >>> x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
        >>> nb = knn_neighborhood(x, 2)  # point 0: three points tie at distance 1
        >>> nb.idx[0, 0].tolist(), nb.weight[0, 0].tolist()
        ([0, 1, 2, 3], [1.0, 0.3333333432674408, 0.3333333432674408, 0.3333333432674408])
    """
    _check_x_k_mask(x, k, mask)
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float))
                             or not rtol >= 0):
        raise value_error("rtol", "a number >= 0 or None", repr(rtol))
    check_finite("x", x, mask)
    if input_error is not None and not (
        isinstance(input_error, Tensor) and input_error.shape == x.shape[:1]
        or isinstance(input_error, (int, float)) and not isinstance(input_error, bool)
        and input_error >= 0):
        raise value_error("input_error", f"a float >= 0 or a tensor of shape ({x.shape[0]},)",
                          shape_of(input_error) if isinstance(input_error, Tensor)
                          else repr(input_error))
    return _knn_neighborhood(x, k, mask, rtol, input_error)


def _knn_neighborhood(x: Tensor, k: int, mask: Tensor | None, rtol: float | None = None,
                      input_error: Tensor | float | None = None) -> Neighborhood:
    """:func:`knn_neighborhood` without the argument checks (for the encoders)."""
    from geo3d.ops import knn

    B, N, _ = x.shape
    dev, dt = x.device, x.dtype
    kk = min(int(k), N)
    if B == 0:  # empty batch: empty graph (geo3d.ops.knn cannot reshape 0 rows)
        return Neighborhood(torch.zeros(0, N, kk, dtype=torch.long, device=dev),
                            torch.zeros(0, N, kk, dtype=torch.bool, device=dev),
                            torch.zeros(0, N, kk, dtype=dt, device=dev))
    eps = torch.finfo(dt).eps
    rt = 0.0 if rtol is None else float(rtol)
    xs, lengths, perm = _valid_first(x.detach(), mask)
    rvalid = torch.arange(N, device=dev)[None] < lengths[:, None]  # (B, N), valid-first order
    r2 = torch.where(rvalid, (xs * xs).sum(-1), 0).amax(1) if N else xs.new_zeros(B)
    r = r2.sqrt().view(B, 1, 1)
    if input_error is None:
        delta = eps
    elif isinstance(input_error, Tensor):
        delta = input_error.detach().to(device=dev, dtype=dt).view(B, 1, 1)
    else:
        delta = float(input_error)
    n_nb = torch.minimum(lengths, torch.tensor(kk, device=dev))  # neighbours per valid row
    # a few spare neighbours: rounding-level ties at the k-th distance rarely involve more
    # points, so one kNN call usually suffices (grids double the request until complete)
    kq = min(kk + max(4, kk // 4), N)
    while True:
        d, idx_s = knn(xs, xs, kq, x_lengths=lengths, y_lengths=lengths)  # self first
        dk = d.gather(-1, (n_nb - 1).clamp(min=0).view(B, 1, 1).expand(B, N, 1))  # (B, N, 1)
        dkf = torch.where(torch.isfinite(dk), dk, 0)  # inf: fewer valid points than k
        tau = (64 * eps + rt) * dkf + 64 * delta * r * dkf.sqrt()
        inside = (idx_s >= 0) & (d <= dk + tau)
        # a tie may continue beyond the kq computed neighbours: ask for more
        if kq == N or not bool((inside[..., -1] & rvalid).any()):
            break
        kq = min(2 * kq, N)
    pos = torch.arange(kq, device=dev).view(1, 1, kq)
    strict = (idx_s >= 0) & ((d < dk - tau) | (pos == 0))
    shell = inside & ~strict
    t = strict.sum(-1, keepdim=True)
    s = shell.sum(-1, keepdim=True)
    share = (n_nb.view(B, 1, 1) - t).clamp(min=0)
    shell = shell & (share > 0)
    w = torch.where(strict, 1.0, torch.where(shell, share.to(dt) / s.clamp(min=1).to(dt), 0.0))
    nbr = (strict | shell) & rvalid[..., None]
    K = max(int(nbr.sum(-1).max()) if nbr.numel() else 0, kk)
    K = min(K, kq)
    nbr, w, idx_s = nbr[..., :K], w[..., :K].to(dt), idx_s[..., :K]
    w = torch.where(nbr, w, torch.zeros((), dtype=dt, device=dev))
    self_s = torch.arange(N, device=dev).view(1, N, 1).expand(B, N, K)
    idx_s = torch.where(nbr, idx_s, self_s)
    if perm is None:
        return Neighborhood(idx_s, nbr, w)
    inv_perm = torch.argsort(perm, dim=1)
    rows = inv_perm.unsqueeze(-1).expand(B, N, K)
    idx_o = torch.gather(perm, 1, idx_s.reshape(B, N * K)).view(B, N, K)
    return Neighborhood(
        torch.gather(idx_o, 1, rows), torch.gather(nbr, 1, rows), torch.gather(w, 1, rows)
    )


def weighted_mean(x: Tensor, weight: Tensor, dim: int) -> Tensor:
    """``sum(w x) / sum(w)`` over ``dim`` (``weight`` broadcasts against ``x``); 0 where the
    weights sum to 0. Entries with weight 0 never enter (not even as NaN/inf)."""
    w = weight.to(x.dtype)
    num = torch.where(w != 0, x * w, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim)
    den = w.expand_as(x).sum(dim) if w.shape != x.shape else w.sum(dim)
    return num / torch.where(den > 0, den, torch.ones((), dtype=x.dtype, device=x.device))
