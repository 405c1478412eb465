"""Neighbour graphs with torch_geometric's ``edge_index`` conventions."""

from __future__ import annotations

from typing import Literal

import torch

from geo3d._validation import check_finite, shape_of, value_error

from ._checks import _check_positive_int
from ._knn import Backend, knn

__all__ = ["knn_graph", "radius_graph"]

Flow = Literal["source_to_target", "target_to_source"]


def _check_flat(x: object, batch: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise value_error("x", "a floating tensor of shape (N, D)", shape_of(x))
    if x.shape[1] < 1:
        raise value_error("x", "at least one feature (N, D >= 1)", tuple(x.shape))
    if batch is not None:
        if not isinstance(batch, torch.Tensor) or batch.shape != (x.shape[0],):
            raise value_error("batch", f"an integer tensor of shape ({x.shape[0]},)", shape_of(batch))
        if batch.is_floating_point() or batch.dtype == torch.bool:
            raise value_error("batch", "an integer tensor", f"dtype {batch.dtype}")
        batch = batch.to(device=x.device, dtype=torch.long)
        if batch.numel() and int(batch.min()) < 0:
            raise value_error("batch", "values >= 0", f"minimum {int(batch.min())}")
    check_finite("x", x)
    return x, batch


def _to_padded(
    x: torch.Tensor, batch: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat ``x (N, D)`` + ``batch (N,)`` -> padded ``(B, L, D)``, lengths ``(B,)`` and the flat
    index of every padded slot ``(B, L)`` (-1 for padding). Works for unsorted ``batch``."""
    n = x.shape[0]
    if batch is None:
        flat = torch.arange(n, device=x.device)[None]
        return x[None], torch.tensor([n], device=x.device), flat
    counts = torch.bincount(batch)
    nb, width = counts.numel(), int(counts.max()) if n else 0
    order = torch.argsort(batch, stable=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=x.device) - start[batch[order]]
    padded = x.new_zeros((nb, width, x.shape[1]))
    padded[batch[order], slot] = x[order]
    flat = torch.full((nb, width), -1, dtype=torch.long, device=x.device)
    flat[batch[order], slot] = order
    return padded, counts, flat


def _edges(idx: torch.Tensor, flat: torch.Tensor, flow: str) -> torch.Tensor:
    """Neighbour table ``idx (B, L, k)`` (padded positions, -1 = none) -> edge_index ``(2, E)``.

    Edges are grouped by centre (in increasing flat index), neighbours by increasing distance.
    """
    b, width, kk = idx.shape
    centre = flat[:, :, None].expand(b, width, kk)
    nbr = torch.where(
        idx >= 0, flat.gather(1, idx.clamp(min=0).reshape(b, -1)).reshape(idx.shape), -1
    )
    keep = (idx >= 0) & (centre >= 0)
    centre, nbr = centre[keep], nbr[keep]
    order = torch.argsort(centre, stable=True)
    centre, nbr = centre[order], nbr[order]
    if flow == "source_to_target":
        return torch.stack([nbr, centre])
    return torch.stack([centre, nbr])


def _check_flow(flow: str) -> None:
    if flow not in ("source_to_target", "target_to_source"):
        raise value_error("flow", "'source_to_target' or 'target_to_source'", repr(flow))


def _drop_self(idx: torch.Tensor, dists: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``k + 1`` neighbours per row drop the row itself (or, if absent, the last one)."""
    b, width, _ = idx.shape
    me = torch.arange(width, device=idx.device)[None, :, None]
    is_self = idx == me
    keep = ~is_self
    keep[..., -1] &= is_self.any(-1)  # no self among them: drop the farthest instead
    return idx[keep].reshape(b, width, k), dists[keep].reshape(b, width, k)


def knn_graph(
    x: torch.Tensor,
    k: int,
    batch: torch.Tensor | None = None,
    loop: bool = False,
    flow: Flow = "source_to_target",
    cosine: bool = False,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    r"""k-nearest-neighbour graph, ``edge_index`` compatible with ``torch_geometric``.

    Same conventions as ``torch_geometric.nn.knn_graph``: with ``flow="source_to_target"``
    row 0 holds the neighbour (source) ``j`` and row 1 the centre (target) ``i``, so
    message passing aggregates the k neighbours into each centre. Points only connect within
    their own graph of ``batch`` (any order of ``batch`` is accepted). Unlike torch_cluster,
    neighbours are exact and ties go to the lower index (see :func:`knn`); without ``loop``
    every centre gets exactly ``min(k, n_graph - 1)`` neighbours (the centre itself is removed
    even if duplicates of it exist). Edges are grouped by centre, nearest neighbour first.

    Args:
        x: node positions/features, shape :math:`(N, D)`.
        k: neighbours per node, ``>= 1``.
        batch: graph index of every node, shape :math:`(N,)`, int (None: one graph).
        loop: include self-loops (each node is then its own first neighbour, also when it
            has duplicates: ``k=1`` gives exactly the self-loops).
        flow: ``"source_to_target"`` (default) or ``"target_to_source"`` (rows swapped).
        cosine: use cosine distance (neighbours of the L2-normalised features).
        backend: passed to :func:`knn`.

    Returns:
        edge_index, shape :math:`(2, E)`, int64, with :math:`E \le N k`.

    Raises:
        ValueError: ``x`` not a floating ``(N, D)`` tensor, bad ``batch``, ``k < 1``, unknown
            ``flow``, and (when value checks are on, see
            :func:`geo3d.rotations.set_value_checks`) NaN/inf in ``x``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
        >>> knn_graph(x, 1, loop=True).tolist()  # duplicates: still each node to itself
        [[0, 1, 2], [0, 1, 2]]
    """
    x, batch = _check_flat(x, batch)
    k = _check_positive_int("k", k)
    _check_flow(flow)
    if cosine:
        x = torch.nn.functional.normalize(x, dim=-1)
    padded, lengths, flat = _to_padded(x.detach(), batch)
    kk = k if loop else k + 1
    d, idx = knn(padded, padded, kk, lengths, lengths, backend=backend)
    if not loop:
        idx, d = _drop_self(idx, d, k)
    return _edges(idx, flat, flow)


def radius_graph(
    x: torch.Tensor,
    r: float,
    batch: torch.Tensor | None = None,
    loop: bool = False,
    max_num_neighbors: int = 32,
    flow: Flow = "source_to_target",
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    r"""Graph of all pairs closer than ``r``, ``edge_index`` compatible with ``torch_geometric``.

    Same conventions as ``torch_geometric.nn.radius_graph``: an edge ``j -> i`` for every pair
    in the same graph with :math:`\|x_i - x_j\|^2 < r^2` (strict, like torch_cluster; ``r * r`` is taken in
    the dtype of ``x``), row 0 =
    neighbour ``j``, row 1 = centre ``i`` for ``flow="source_to_target"``. At most
    ``max_num_neighbors`` neighbours per centre are kept; unlike torch_cluster (which keeps an
    arbitrary subset) these are the *nearest* ones, ties to the lower index, so the result is
    deterministic. Memory is O(N * max_num_neighbors).

    Args:
        x: node positions, shape :math:`(N, D)`.
        r: radius, ``> 0``.
        batch: graph index of every node, shape :math:`(N,)` (None: one graph).
        loop: include self-loops.
        max_num_neighbors: maximum neighbours per centre; with ``loop`` the self-loop counts
            as one of them (as in torch_cluster) and is always kept, also when the node has
            duplicates (they tie with it at distance 0).
        flow: ``"source_to_target"`` (default) or ``"target_to_source"``.
        backend: passed to :func:`knn`.

    Returns:
        edge_index, shape :math:`(2, E)`, int64.

    Raises:
        ValueError: ``x`` not a floating ``(N, D)`` tensor, bad ``batch``, ``r`` not positive,
            ``max_num_neighbors < 1``, unknown ``flow``, and (when value checks are on, see
            :func:`geo3d.rotations.set_value_checks`) NaN/inf in ``x``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
        >>> radius_graph(x, 1.0, loop=True, max_num_neighbors=1).tolist()
        [[0, 1, 2], [0, 1, 2]]
    """
    x, batch = _check_flat(x, batch)
    if isinstance(r, torch.Tensor):
        r = float(r)
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not r > 0:
        raise value_error("r", "a positive number", repr(r))
    max_num_neighbors = _check_positive_int("max_num_neighbors", max_num_neighbors)
    _check_flow(flow)
    padded, lengths, flat = _to_padded(x.detach(), batch)
    kk = max_num_neighbors if loop else max_num_neighbors + 1
    d, idx = knn(padded, padded, kk, lengths, lengths, backend=backend)
    if not loop:
        idx, d = _drop_self(idx, d, max_num_neighbors)
    idx = torch.where(d < r * r, idx, -1)
    return _edges(idx, flat, flow)
