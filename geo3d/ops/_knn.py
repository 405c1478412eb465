"""Exact k-nearest neighbours with bounded memory (chunked brute force or a k-d tree)."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

from geo3d._validation import value_error

from ._checks import (
    _check_finite_points,
    _check_lengths,
    _check_pair,
    _check_positive_int,
    _sqdist_cols,
    _sqdist_exact,
)

__all__ = ["KNN", "knn"]

Backend = Literal["auto", "brute", "kdtree", "pytorch3d", "torch_cluster"]
_BACKENDS = ("auto", "brute", "kdtree", "pytorch3d", "torch_cluster")

#: Bytes allowed for one ``(rows, M)`` distance block of the brute-force backend.
MEMORY_BUDGET_CPU = 256 * 2**20
MEMORY_BUDGET_CUDA = 1024 * 2**20

# "auto" uses the k-d tree on CPU for D <= _KDTREE_MAX_DIM once N * M reaches this.
_KDTREE_MAX_DIM = 8
_KDTREE_MIN_PAIRS = 2**18


class KNN(NamedTuple):
    """Result of :func:`knn` (a tuple: ``dists, idx = knn(...)`` works).

    Attributes:
        dists: squared distances, shape :math:`(*, N, k)`, ascending along the last axis.
        idx: indices into ``y``'s point axis, shape :math:`(*, N, k)`, int64.
    """

    dists: torch.Tensor
    idx: torch.Tensor


def knn(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> KNN:
    r"""Exact k nearest neighbours in ``y`` of every point of ``x``.

    For every query ``x[..., i, :]`` returns the ``k`` points ``y[..., j, :]`` with the smallest
    squared distance :math:`\sum_d (x_{id} - y_{jd})^2`, ordered by (distance, index): equal
    distances are resolved to the lower index, deterministically, including which of several
    tied candidates makes it into the top ``k``. One exception to that tie rule: when ``y`` is
    ``x`` itself (the same tensor object, as in ``knn(x, x, k)``), every query point ``i`` that
    is a valid reference point is its own first neighbour (distance 0), even when duplicates
    of it have lower indices; the other neighbours follow by (distance, index). So
    ``knn(x, x, k).idx[..., 0]`` is ``arange(N)`` for any input, duplicates included.

    "Exact" means exact with respect to that distance evaluated in the input dtype with a fixed
    summation order (see ``_sqdist_exact``): candidates may be *selected* with a fast
    approximation (the expanded form :math:`\|x\|^2 + \|y\|^2 - 2 x\cdot y` in chunks, or a
    k-d tree), but every candidate is re-scored with the exact formula, and a row is accepted
    only when a rigorous rounding-error bound proves that no excluded point can beat (or tie)
    its k-th neighbour; otherwise that row is recomputed exactly against all of ``y``. So the
    result equals a brute-force evaluation of all ``N x M`` exact distances followed by a
    stable sort, bit for bit, on every backend (for D > 8 the exact distance is a
    ``sum(-1)`` reduction, whose order torch fixes per D).

    Memory is bounded: the brute-force backend works on blocks of rows, so its peak extra
    memory is O(chunk * M + N * k) (blocks of at most 256 MiB on CPU / 1 GiB on CUDA, see
    ``geo3d.ops._knn.MEMORY_BUDGET_CPU`` / ``MEMORY_BUDGET_CUDA``, or ``chunk_size`` rows); the
    k-d tree backend needs O(M + N * k). Nothing of size N x M is ever allocated.

    Ragged batches: ``x_lengths[b]`` / ``y_lengths[b]`` give the number of valid (leading)
    points; padded points of ``y`` are never returned. Fill values: a padded query row
    (``i >= x_lengths[b]``) and a missing neighbour (``k > y_lengths[b]``, listed after the real
    ones) have ``idx = -1`` and ``dists = inf``.

    The distances are differentiable w.r.t. ``x`` and ``y`` (recomputed from the selected
    pairs); the indices are not.

    Args:
        x: query points, shape :math:`(*, N, D)`.
        y: reference points, shape :math:`(*, M, D)` (same batch shape, dtype and device).
        k: number of neighbours, ``>= 1``.
        x_lengths: valid query points per batch element, shape :math:`(*)`, integers in [0, N].
        y_lengths: valid reference points per batch element, shape :math:`(*)`, in [0, M].
        backend: ``"brute"`` (chunked matmul + top-k, any device and dimension), ``"kdtree"``
            (scipy ``cKDTree`` on CPU, fast for small D), ``"pytorch3d"`` / ``"torch_cluster"``
            (candidate generators from those packages, if installed; the result is still
            certified and made exact as above), or ``"auto"``: k-d tree on CPU for
            ``D <= 8`` and large inputs, brute force otherwise.
        chunk_size: rows per block for the brute-force backend (default: from the budget).

    Returns:
        :class:`KNN` ``(dists, idx)``: squared distances :math:`(*, N, k)` in the input
        dtype and int64 indices :math:`(*, N, k)` (new tensors, never views of the inputs).

    Raises:
        ValueError: for a non-tensor, non-floating or wrongly shaped ``x``/``y``, mismatched
            batch shapes, dtypes or devices, ``k < 1``, lengths of the wrong shape, dtype or
            range, an unknown backend, and (when value checks are on, see
            :func:`geo3d.rotations.set_value_checks`) NaN/inf in a valid point of ``x`` or
            ``y`` (padded points may hold anything).

    Example:
        >>> x = torch.rand(2, 100, 3)
        >>> d, i = knn(x, x, k=4)
        >>> bool((i[..., 0] == torch.arange(100)).all())  # each point is its own nearest
        True
    """
    same = y is x
    _check_pair(x, y)
    k = _check_positive_int("k", k)
    if chunk_size is not None:
        chunk_size = _check_positive_int("chunk_size", chunk_size)
    if backend not in _BACKENDS:
        raise value_error("backend", f"one of {_BACKENDS}", repr(backend))
    batch_shape = x.shape[:-2]
    n, dim = x.shape[-2], x.shape[-1]
    m = y.shape[-2]
    xl = _check_lengths("x_lengths", x_lengths, batch_shape, n, x.device)
    yl = _check_lengths("y_lengths", y_lengths, batch_shape, m, x.device)
    nb = math.prod(batch_shape)
    xb = x.reshape(nb, n, dim)
    yb = y.reshape(nb, m, dim)
    _check_finite_points("x", xb, xl)
    if not same:
        _check_finite_points("y", yb, yl)
    backend = _resolve_backend(backend, x.device, n, m, dim)

    if xb.shape[0] == 0 or n == 0 or m == 0:
        idx = torch.full((xb.shape[0], n, k), -1, dtype=torch.long, device=x.device)
    else:
        with torch.no_grad():
            idx = _knn_indices(xb.detach(), yb.detach(), k, xl, yl, backend, chunk_size)
            if same:
                idx = _self_first(idx, xl, yl)
    dists = _gather_sqdist(xb, yb, idx)
    return KNN(dists.reshape(*batch_shape, n, k), idx.reshape(*batch_shape, n, k))


def _self_first(idx: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor) -> torch.Tensor:
    """Put every query ``i`` first in its own row ``idx[b, i]`` (``(B, N, k)``, y is x).

    Only valid query rows whose ``i`` is also a valid reference point (``i < xl[b]``,
    ``i < yl[b]``) change: ``i`` is removed
    where it occurs and prepended; where it does not occur (more than ``k - 1`` duplicates of
    it at lower indices, or ties at the k-th distance) the last entry is dropped. The distance
    of ``i`` to itself is exactly 0, the smallest possible, so the result is the top ``k``
    under the order (distance, j != i, j).
    """
    b, n, k = idx.shape
    me = torch.arange(n, device=idx.device)[None, :, None]
    # (B, N, 1): a valid query that is itself a valid reference point
    rowv = (me < yl[:, None, None]) & (me < xl[:, None, None])
    rest = idx.masked_fill(idx == me, -2)  # mark i; keep the order of the others
    # stable partition: the entries != -2 keep their order; take the first k - 1 of them
    key = (rest == -2).to(torch.long)
    order = torch.argsort(key, dim=-1, stable=True)
    others = rest.gather(-1, order)[..., : k - 1]
    first = me.expand(b, n, 1)
    out = torch.cat([first, others], dim=-1)
    return torch.where(rowv, out, idx)


# --------------------------------------------------------------------------------------------
# dispatch


def _resolve_backend(backend: str, device: torch.device, n: int, m: int, dim: int) -> str:
    if backend == "auto":
        if device.type == "cpu" and dim <= _KDTREE_MAX_DIM and n * m >= _KDTREE_MIN_PAIRS:
            return "kdtree"
        return "brute"
    if backend == "pytorch3d":
        try:
            import pytorch3d.ops  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "knn(backend='pytorch3d') needs pytorch3d: install it (see "
                "https://github.com/facebookresearch/pytorch3d/blob/main/INSTALL.md) or use "
                "backend='brute'/'kdtree'"
            ) from e
    if backend == "torch_cluster":
        try:
            import torch_cluster  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "knn(backend='torch_cluster') needs torch-cluster: `pip install torch-cluster` "
                "(wheels from https://data.pyg.org/whl/), or use backend='brute'/'kdtree'"
            ) from e
    return backend


def _budget(device: torch.device) -> int:
    return MEMORY_BUDGET_CUDA if device.type == "cuda" else MEMORY_BUDGET_CPU


def _gemm_eps(dtype: torch.dtype) -> float:
    """Unit roundoff to assume for a matmul in ``dtype`` (TF32/bf16 when allowed)."""
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32:
        if torch.get_float32_matmul_precision() != "highest" or (
            torch.backends.cuda.matmul.allow_tf32
        ):
            eps = max(eps, 2.0**-7)
    return eps


def _knn_indices(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    xl: torch.Tensor,
    yl: torch.Tensor,
    backend: str,
    chunk_size: int | None,
) -> torch.Tensor:
    """Exact sorted neighbour indices ``(B, N, k)``, -1 where missing. Inputs ``(B, N|M, D)``."""
    if backend == "brute":
        cand, bound = _brute_candidates(x, y, k, xl, yl, chunk_size)
    elif backend == "kdtree":
        cand, bound = _kdtree_candidates(x, y, k, xl, yl)
    elif backend == "pytorch3d":
        cand, bound = _pytorch3d_candidates(x, y, k, xl, yl)
    else:
        cand, bound = _torch_cluster_candidates(x, y, k, xl, yl)
    return _certify(x, y, k, xl, yl, cand, bound, chunk_size)


# --------------------------------------------------------------------------------------------
# candidate generators: each returns
#   cand  (B, N, kc) int64 candidate indices (anything outside [0, y_len) means "none"),
#   bound (B, N) a lower bound on the exact distance of every valid y point NOT in cand
#         (+inf when every valid point is a candidate).


def _brute_candidates(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    xl: torch.Tensor,
    yl: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, dim = x.shape
    m = y.shape[1]
    kc = min(m, k)
    dev, dt = x.device, x.dtype
    inf = torch.tensor(math.inf, dtype=dt, device=dev)
    ymask = torch.arange(m, device=dev)[None] < yl[:, None]  # (B, M)
    xmask = torch.arange(n, device=dev)[None] < xl[:, None]  # (B, N)
    # Distances are translation invariant and the expanded form is most accurate near the
    # origin: centre both sets on the mean of the valid reference points.
    ysafe = torch.where(ymask[..., None], y, 0)
    center = ysafe.sum(1, keepdim=True) / yl.clamp(min=1).to(dt)[:, None, None]
    yc = torch.where(ymask[..., None], y - center, 0)
    xc = torch.where(xmask[..., None], x - center, 0)
    yy = (yc * yc).sum(-1)
    xx = (xc * xc).sum(-1)
    ymax = yy.amax(1).sqrt()  # padded rows are 0
    yy = torch.where(ymask, yy, inf)  # padded reference points score +inf
    # |expanded - exact| <= c * eps * (|x| + |y|)^2 covers the rounding of the matmul, of
    # the norms and of the exact re-scoring (with a safety factor of 2).
    tol = (4 * dim + 8) * _gemm_eps(dt) * (xx.sqrt() + ymax[:, None]) ** 2
    # one matmul gives |y|^2 - 2 x.y (the row constant |x|^2 does not change the ranking):
    # [x, 1] @ [-2 y, |y|^2]^T, no broadcast copy and no extra pass over the block
    ones = torch.ones_like(xc[..., :1])
    xa = torch.cat([xc, ones], -1)
    yaT = torch.cat([-2 * yc, yy[..., None]], -1).transpose(1, 2)

    rows = chunk_size or max(1, _budget(dev) // (m * dt.itemsize))
    if rows >= n:
        bb, rows = max(1, rows // n), n
    else:
        bb = 1
    cand = torch.empty((b, n, kc), dtype=torch.long, device=dev)
    nxt = torch.full((b, n), math.inf, dtype=dt, device=dev)
    for b0 in range(0, b, bb):
        b1 = min(b, b0 + bb)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            block = torch.bmm(xa[b0:b1, r0:r1], yaT[b0:b1])
            if kc == 1:
                inds = block.argmin(-1, keepdim=True)
            else:
                inds = block.topk(kc, dim=-1, largest=False, sorted=False).indices
            cand[b0:b1, r0:r1] = inds
            if kc < m:
                # the (k+1)-th smallest approximate distance bounds every excluded point
                block.scatter_(-1, inds, math.inf)
                nxt[b0:b1, r0:r1] = block.amin(-1)
            del block, inds
    bound = nxt + xx - tol
    bound = torch.where((yl <= kc)[:, None], inf, bound)
    return cand, bound


def _brute_nearest_both(
    x: torch.Tensor,
    y: torch.Tensor,
    xl: torch.Tensor,
    yl: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-neighbour candidates both ways (x -> y and y -> x) from ONE pass over the
    chunked distance blocks (for the Chamfer distance).

    Returns ``cand_xy (B, N, 1)``, ``bound_xy (B, N)``, ``cand_yx (B, M, 1)``,
    ``bound_yx (B, M)`` with the meaning of the other candidate generators.
    """
    b, n, dim = x.shape
    m = y.shape[1]
    dev, dt = x.device, x.dtype
    inf = torch.tensor(math.inf, dtype=dt, device=dev)
    ymask = torch.arange(m, device=dev)[None] < yl[:, None]
    xmask = torch.arange(n, device=dev)[None] < xl[:, None]
    ysafe = torch.where(ymask[..., None], y, 0)
    center = ysafe.sum(1, keepdim=True) / yl.clamp(min=1).to(dt)[:, None, None]
    yc = torch.where(ymask[..., None], y - center, 0)
    xc = torch.where(xmask[..., None], x - center, 0)
    yy = (yc * yc).sum(-1)
    xx = (xc * xc).sum(-1)
    ymax, xmax = yy.amax(1).sqrt(), xx.amax(1).sqrt()
    c = (4 * dim + 8) * _gemm_eps(dt)
    tol_x = c * (xx.sqrt() + ymax[:, None]) ** 2
    tol_y = c * (yy.sqrt() + xmax[:, None]) ** 2
    yy = torch.where(ymask, yy, inf)
    xx = torch.where(xmask, xx, inf)
    # full approximate distances (inf on padding) from one matmul:
    # [x, 1, |x|^2] @ [-2 y, |y|^2, 1]^T
    ones_x, ones_y = torch.ones_like(xc[..., :1]), torch.ones_like(yc[..., :1])
    xa = torch.cat([xc, ones_x, xx[..., None]], -1)
    yaT = torch.cat([-2 * yc, yy[..., None], ones_y], -1).transpose(1, 2)

    rows = chunk_size or max(1, _budget(dev) // (m * dt.itemsize))
    if rows >= n:
        bb, rows = max(1, rows // n), n
    else:
        bb = 1
    cand_x = torch.empty((b, n, 1), dtype=torch.long, device=dev)
    nxt_x = torch.full((b, n), math.inf, dtype=dt, device=dev)
    best_v = torch.full((b, 1, m), math.inf, dtype=dt, device=dev)
    best_i = torch.zeros((b, 1, m), dtype=torch.long, device=dev)
    second_v = torch.full((b, 1, m), math.inf, dtype=dt, device=dev)
    for b0 in range(0, b, bb):
        b1 = min(b, b0 + bb)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            block = torch.bmm(xa[b0:b1, r0:r1], yaT[b0:b1])
            # rows: nearest y and the second smallest value
            v, i = block.min(-1, keepdim=True)
            cand_x[b0:b1, r0:r1] = i
            if m > 1:
                block.scatter_(-1, i, math.inf)
                nxt_x[b0:b1, r0:r1] = block.amin(-1)
                block.scatter_(-1, i, v)
            # columns: nearest x among these rows and the second smallest, merged with the
            # running best over earlier row blocks (ties keep the earlier = lower row)
            cv, ci = block.min(1, keepdim=True)
            if r1 - r0 > 1:
                block.scatter_(1, ci, math.inf)
                cv2 = block.amin(1, keepdim=True)
            else:
                cv2 = torch.full_like(cv, math.inf)
            bv, bi, sv = best_v[b0:b1], best_i[b0:b1], second_v[b0:b1]
            better = cv < bv
            second_v[b0:b1] = torch.where(better, torch.minimum(bv, cv2), torch.minimum(sv, cv))
            best_i[b0:b1] = torch.where(better, ci + r0, bi)
            best_v[b0:b1] = torch.where(better, cv, bv)
            del block, v, i, cv, ci, cv2
    bound_x = torch.where((yl <= 1)[:, None], inf, nxt_x - tol_x)
    bound_y = torch.where((xl <= 1)[:, None], inf, second_v[:, 0] - tol_y)
    return cand_x, bound_x, best_i.transpose(1, 2), bound_y


def _nearest_both(
    x: torch.Tensor,
    y: torch.Tensor,
    xl: torch.Tensor,
    yl: torch.Tensor,
    backend: str,
    chunk_size: int | None,
    same: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact nearest neighbours both ways for flattened ``x (B, N, D)``, ``y (B, M, D)``.

    ``same``: ``y`` is ``x`` (the caller's tensors): the self-first rule of :func:`knn`.

    Returns ``(d_xy (B, N), i_xy (B, N), d_yx (B, M), i_yx (B, M))`` with :func:`knn`'s
    fill values; distances are differentiable.
    """
    n, m = x.shape[1], y.shape[1]
    backend = _resolve_backend(backend, x.device, max(n, m), max(n, m), x.shape[-1])
    if x.shape[0] == 0 or n == 0 or m == 0:
        ixy = torch.full((x.shape[0], n, 1), -1, dtype=torch.long, device=x.device)
        iyx = torch.full((x.shape[0], m, 1), -1, dtype=torch.long, device=x.device)
    elif backend == "brute":
        with torch.no_grad():
            xd, yd = x.detach(), y.detach()
            cx, bx, cy, by = _brute_nearest_both(xd, yd, xl, yl, chunk_size)
            ixy = _certify(xd, yd, 1, xl, yl, cx, bx, chunk_size)
            iyx = _certify(yd, xd, 1, yl, xl, cy, by, chunk_size)
    else:
        with torch.no_grad():
            xd, yd = x.detach(), y.detach()
            ixy = _knn_indices(xd, yd, 1, xl, yl, backend, chunk_size)
            iyx = _knn_indices(yd, xd, 1, yl, xl, backend, chunk_size)
    if same and n and m and x.shape[0]:  # x is y: every point is its own nearest point
        ixy = _self_first(ixy, xl, yl)
        iyx = _self_first(iyx, yl, xl)
    dxy = _gather_sqdist(x, y, ixy)[..., 0]
    dyx = _gather_sqdist(y, x, iyx)[..., 0]
    return dxy, ixy[..., 0], dyx, iyx[..., 0]


def _kdtree_candidates(
    x: torch.Tensor, y: torch.Tensor, k: int, xl: torch.Tensor, yl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.spatial import cKDTree

    b, n, dim = x.shape
    m = y.shape[1]
    kc = min(m, k + 1)
    cand = torch.full((b, n, kc), m, dtype=torch.long)
    bound = torch.full((b, n), math.inf, dtype=torch.float64)
    # scipy works in float64 (near-exact for float32 inputs); the bound allows for the
    # rounding of both its distances and ours.
    rel = 4 * (dim + 4) * torch.finfo(x.dtype).eps
    xn = x.cpu().double().numpy()
    yn = y.cpu().double().numpy()
    for bi, (nq, mr) in enumerate(zip(xl.tolist(), yl.tolist(), strict=True)):
        if nq == 0 or mr == 0:
            continue
        q = min(kc, mr)
        tree = cKDTree(yn[bi, :mr], balanced_tree=False)
        # as many threads as torch uses; a thread pool only pays off for many queries
        workers = torch.get_num_threads() if nq >= 8192 else 1
        dd, ii = tree.query(xn[bi, :nq], k=q, workers=workers)
        cand[bi, :nq, :q] = torch.from_numpy(ii.reshape(nq, q).astype("int64", copy=False))
        if q < mr:
            bound[bi, :nq] = torch.from_numpy(dd.reshape(nq, q)[:, -1]) ** 2 * (1.0 - rel)
    return cand.to(x.device), bound.to(device=x.device, dtype=x.dtype)


def _pytorch3d_candidates(
    x: torch.Tensor, y: torch.Tensor, k: int, xl: torch.Tensor, yl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - needs pytorch3d
    from pytorch3d.ops import knn_points

    m = y.shape[1]
    kc = min(m, k + 2)
    res = knn_points(x, y, lengths1=xl, lengths2=yl, K=kc, return_sorted=True)
    pos = torch.arange(kc, device=x.device)
    cand = torch.where(pos[None, None] < yl[:, None, None], res.idx, m)
    rel = 4 * (x.shape[-1] + 4) * torch.finfo(x.dtype).eps
    bound = res.dists[..., -1] * (1.0 - rel)
    bound = torch.where((yl <= kc)[:, None], math.inf, bound)
    return cand, bound


def _torch_cluster_candidates(
    x: torch.Tensor, y: torch.Tensor, k: int, xl: torch.Tensor, yl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - needs torch_cluster
    import torch_cluster

    b, n, dim = x.shape
    m = y.shape[1]
    dev = x.device
    kc = min(m, k + 2)
    xmask = torch.arange(n, device=dev)[None] < xl[:, None]
    ymask = torch.arange(m, device=dev)[None] < yl[:, None]
    bx = torch.arange(b, device=dev)[:, None].expand(b, n)[xmask]
    by = torch.arange(b, device=dev)[:, None].expand(b, m)[ymask]
    qpos = torch.nonzero(xmask)  # (P, 2): (batch, row)
    rpos = torch.nonzero(ymask)
    edge = torch_cluster.knn(y[ymask], x[xmask], kc, by, bx)  # row 0: query, row 1: reference
    q, r = edge[0], edge[1]
    order = torch.argsort(q, stable=True)
    q, r = q[order], r[order]
    counts = torch.bincount(q, minlength=qpos.shape[0])
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(q.numel(), device=dev) - start[q]
    cand = torch.full((b, n, kc), m, dtype=torch.long, device=dev)
    cand[qpos[q, 0], qpos[q, 1], slot] = rpos[r, 1]
    valid = cand < yl[:, None, None]
    d = _cand_sqdist(x, y, torch.where(valid, cand, 0))
    d = torch.where(valid, d, -math.inf)
    rel = 4 * (dim + 4) * torch.finfo(x.dtype).eps
    bound = d.amax(-1) * (1.0 - rel)
    full_rows = valid.sum(-1) >= torch.minimum(yl, torch.full_like(yl, kc))[:, None]
    bound = torch.where(full_rows, bound, -math.inf)  # an incomplete answer is never trusted
    bound = torch.where((yl <= kc)[:, None] & full_rows, math.inf, bound)
    return cand, bound


# --------------------------------------------------------------------------------------------
# exact re-scoring, certification and fallback


def _gather_rows(y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``y (B, M, D)``, ``idx (B, ...)`` in [0, M) -> ``(B, ..., D)``."""
    b, dim = y.shape[0], y.shape[-1]
    flat = idx.reshape(b, -1, 1).expand(-1, -1, dim)
    return y.gather(1, flat).reshape(*idx.shape, dim)


def _cand_sqdist(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Exact squared distances ``(B, R, K)`` from ``x (B, R, D)`` to ``y[b, idx[b, r, j]]``.

    ``idx (B, R, K)`` must lie in [0, M). Differentiable w.r.t. ``x`` and ``y``; for D <= 8 it
    gathers one coordinate at a time (no ``(B, R, K, D)`` tensor).
    """
    b, r, kk = idx.shape
    dim = x.shape[-1]
    if dim > 8:
        return _sqdist_exact(x[:, :, None, :], _gather_rows(y, idx))
    flat = idx.reshape(b, r * kk)
    ycols = [y[..., d].gather(1, flat).view(b, r, kk) for d in range(dim)]
    xcols = [x[:, :, d, None] for d in range(dim)]
    return _sqdist_cols(xcols, ycols)


def _sort_by_dist_then_index(
    d: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the last axis by (d, idx) ascending: sort by index, then stably by distance.

    Rows that are already in order (typical for k-d tree candidates) are left alone.
    """
    kk = d.shape[-1]
    if kk <= 1:
        return d, idx
    shape = d.shape
    d, idx = d.reshape(-1, kk), idx.reshape(-1, kk)
    dn, dp = d[:, 1:], d[:, :-1]
    in_order = ((dn > dp) | ((dn == dp) & (idx[:, 1:] > idx[:, :-1]))).all(-1)
    bad = torch.nonzero(~in_order)[:, 0]
    if bad.numel() == 0:
        return d.reshape(shape), idx.reshape(shape)
    db, ib = d[bad], idx[bad]
    ib, order = torch.sort(ib, dim=-1, stable=True)
    db = db.gather(-1, order)
    db, order = torch.sort(db, dim=-1, stable=True)
    ib = ib.gather(-1, order)
    d, idx = d.clone(), idx.clone()
    d[bad], idx[bad] = db, ib
    return d.reshape(shape), idx.reshape(shape)


def _certify(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    xl: torch.Tensor,
    yl: torch.Tensor,
    cand: torch.Tensor,
    bound: torch.Tensor,
    chunk_size: int | None,
) -> torch.Tensor:
    b, n, dim = x.shape
    m = y.shape[1]
    kc = cand.shape[-1]
    dev = x.device
    out = torch.empty((b, n, k), dtype=torch.long, device=dev)
    ok = torch.empty((b, n), dtype=torch.bool, device=dev)
    rows = chunk_size or max(1, _budget(dev) // max(1, kc * (dim + 4) * 8 * b))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        c = cand[:, r0:r1]
        valid = (c >= 0) & (c < yl[:, None, None])
        d = _cand_sqdist(x[:, r0:r1], y, torch.where(valid, c, 0))
        d = d.masked_fill(~valid, math.inf)
        d, c = _sort_by_dist_then_index(d, torch.where(valid, c, m))
        if kc >= k:
            out[:, r0:r1] = c[..., :k]
            dk = d[..., k - 1]
        else:
            out[:, r0:r1, :kc] = c
            out[:, r0:r1, kc:] = m
            dk = torch.full_like(d[..., 0], math.inf)
        bnd = bound[:, r0:r1]
        ok[:, r0:r1] = (bnd > dk) | (bnd == math.inf)
    row_valid = torch.arange(n, device=dev)[None] < xl[:, None]
    fail = ~ok & row_valid
    if bool(fail.any()):
        for bi in torch.unique(torch.nonzero(fail)[:, 0]).tolist():
            rows_b = torch.nonzero(fail[bi])[:, 0]
            out[bi, rows_b] = _exact_rows(x[bi, rows_b], y[bi, : int(yl[bi])], k, m, chunk_size)
    out = torch.where((out < yl[:, None, None]) & row_valid[..., None], out, -1)
    return out


def _exact_rows(
    xr: torch.Tensor, yv: torch.Tensor, k: int, sentinel: int, chunk_size: int | None
) -> torch.Tensor:
    """Exact top-k by (distance, index) of rows ``xr (R, D)`` against all of ``yv (m, D)``."""
    r, m = xr.shape[0], yv.shape[0]
    out = torch.full((r, k), sentinel, dtype=torch.long, device=xr.device)
    if m == 0:
        return out
    kk = min(k, m)
    ar = torch.arange(m, device=xr.device)
    rows = chunk_size or max(
        1, _budget(xr.device) // (m * (32 + 2 * xr.shape[-1] * xr.element_size()))
    )
    dim = xr.shape[-1]
    ycols = [c[None] for c in yv.T.contiguous()] if dim <= 8 else None
    for r0 in range(0, r, rows):
        r1 = min(r, r0 + rows)
        if ycols is not None:
            d = _sqdist_cols([xr[r0:r1, j, None] for j in range(dim)], ycols)  # (c, m)
        else:
            d = _sqdist_exact(xr[r0:r1, None, :], yv[None])
        thr = d.topk(kk, dim=-1, largest=False, sorted=True).values[:, -1:]
        # every point strictly closer than the kk-th distance is in; among those AT that
        # distance the lowest indices are: encode that order in one integer key.
        key = torch.where(d < thr, ar, torch.where(d == thr, ar + m, 2 * m))
        sel = key.topk(kk, dim=-1, largest=False, sorted=False).indices
        ds, sel = _sort_by_dist_then_index(d.gather(-1, sel), sel)
        out[r0:r1, :kk] = sel
    return out


def _gather_sqdist(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Differentiable exact squared distances ``(B, N, k)`` for ``idx (B, N, k)`` (-1 -> inf)."""
    valid = idx >= 0
    if y.shape[1] == 0:
        return torch.full(idx.shape, math.inf, dtype=x.dtype, device=x.device) + 0 * x.sum()
    d = _cand_sqdist(x, y, idx.clamp(min=0))
    return d.masked_fill(~valid, math.inf)
