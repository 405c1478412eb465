"""kNN neighbourhoods with padding masks, on top of :func:`geo3d.ops.knn`."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_knn"]


def masked_knn(x: Tensor, k: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """k nearest neighbours of every point among the valid points of its own cloud.

    Padded points (``mask`` False) are never neighbours. Each point is its own first
    neighbour (distance 0). When a cloud has fewer than ``k`` valid points the missing slots
    are flagged in the returned neighbour mask and their index points at the query itself.

    Args:
        x: features to measure distances in, shape :math:`(B, N, D)`.
        k: number of neighbours (clipped to ``N``).
        mask: bool, shape :math:`(B, N)`, True = valid; None = all valid.

    Returns:
        ``(idx, nbr_mask)``: long indices into the N axis, shape :math:`(B, N, k')` with
        ``k' = min(k, N)``, and bool :math:`(B, N, k')`, True where the slot is a real
        neighbour of a valid query point.
    """
    from geo3d.ops import knn  # geo3d.ops is a lower layer; imported here to keep import light

    if x.dim() != 3:
        raise ValueError(f"x: expected shape (B, N, D), got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k: expected a positive integer, got {k}")
    B, N, _ = x.shape
    kk = min(int(k), N)
    x = x.detach()
    ar = torch.arange(N, device=x.device)
    self_idx = ar.view(1, N, 1).expand(B, N, kk)
    if mask is None or bool(mask.all()):
        _, idx = knn(x, x, kk)
        nbr_mask = torch.ones(B, N, kk, dtype=torch.bool, device=x.device)
        return idx, nbr_mask
    lengths = mask.sum(dim=1)  # (B,)
    # Move valid points to the front (stable, keeps their order), run the length-aware knn,
    # then map indices and rows back.
    perm = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, N)
    xs = torch.gather(x, 1, perm.unsqueeze(-1).expand_as(x))
    _, idx_s = knn(xs, xs, kk, x_lengths=lengths, y_lengths=lengths)  # (B, N, kk), sorted space
    slot_ok = torch.arange(kk, device=x.device).view(1, 1, kk) < lengths.view(B, 1, 1)
    idx_s = torch.where(slot_ok, idx_s, torch.zeros_like(idx_s)).clamp(0, N - 1)
    idx_o = torch.gather(perm, 1, idx_s.reshape(B, N * kk)).view(B, N, kk)  # original ids
    inv_perm = torch.argsort(perm, dim=1)
    idx = torch.gather(idx_o, 1, inv_perm.unsqueeze(-1).expand(B, N, kk))  # original rows
    nbr_mask = slot_ok.expand(B, N, kk) & mask.unsqueeze(-1)
    idx = torch.where(nbr_mask, idx, self_idx)
    return idx, nbr_mask
