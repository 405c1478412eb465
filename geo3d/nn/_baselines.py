"""Non-equivariant baselines with the encoder interface: ``PointNet`` and ``DGCNN``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._batchnorm import MaskedBatchNorm
from ._graph import _knn_neighborhood
from ._output import (
    EncoderOutput,
    center_points,
    centring_error,
    check_points_mask,
    zero_padded,
    zero_rows,
)

__all__ = ["PointNet", "DGCNN"]


class _PointMLP(nn.Module):
    """Linear -> masked BN -> activation on channel-last features ``(B, *S, C)``."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool, act: nn.Module | None) -> None:
        super().__init__()
        self.lin = nn.Linear(c_in, c_out, bias=not batch_norm)
        self.bn = MaskedBatchNorm(c_out) if batch_norm else None
        self.act = act

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.lin(x)
        if self.bn is not None:
            y = self.bn(y.movedim(-1, 1), mask).movedim(1, -1)
        return self.act(y) if self.act is not None else y


def _pool(x: Tensor, mask: Tensor, kind: str, dim: int, weight: Tensor | None = None) -> Tensor:
    # x (..., M, ..., C) pooled over `dim` with mask broadcasting to x minus the channel dim;
    # the mean is weighted by `weight` (shape of mask) when given.
    m = mask.unsqueeze(-1)
    if kind == "mean" and weight is not None:
        w = torch.where(mask, weight, torch.zeros((), dtype=x.dtype, device=x.device)).unsqueeze(-1)
        num = torch.where(m, x * w, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim)
        den = w.sum(dim)
        return num / torch.where(den > 0, den, torch.ones((), dtype=x.dtype, device=x.device))
    if kind == "max":
        neg = torch.finfo(x.dtype).min
        out = torch.where(m, x, torch.full((), neg, dtype=x.dtype, device=x.device)).amax(dim)
        has = m.any(dim)
        return torch.where(has, out, torch.zeros((), dtype=x.dtype, device=x.device))
    num = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim)
    return num / m.to(x.dtype).sum(dim).clamp_min(1.0)


def _check_pool(kind: str, name: str) -> str:
    if kind not in ("max", "mean"):
        raise ValueError(f"{name}: expected 'max' or 'mean', got {kind!r}")
    return kind


class PointNet(nn.Module):
    """PointNet encoder (Qi et al. 2017) without input/feature transforms.

    Shared per-point MLP (linear + masked batch norm + ReLU), a last linear + batch norm to
    ``feat_dim``, masked pooling over points. Not rotation-equivariant; permutation-
    invariant, and translation-invariant with ``center=True``.

    Args:
        feat_dim: output channels ``F``.
        hidden: per-point MLP widths.
        pooling: ``"max"`` or ``"mean"`` over points.
        center: subtract the masked centroid of the input points.
        batch_norm: masked batch norm after every linear layer.

    Shape:
        - points: :math:`(B, N, 3)`, mask: :math:`(B, N)` bool.
        - output: ``invariant (B, F)``, ``equivariant None``, ``point_features (B, N, F)``.
    """

    def __init__(self, feat_dim: int = 512, hidden: Sequence[int] = (64, 64, 64, 128),
                 pooling: str = "max", center: bool = True, batch_norm: bool = True) -> None:
        super().__init__()
        self.feat_dim = int(feat_dim)
        self.pooling = _check_pool(pooling, "pooling")
        self.center = bool(center)
        widths = [3, *[int(h) for h in hidden]]
        self.mlp = nn.ModuleList(
            _PointMLP(a, b, batch_norm, nn.ReLU()) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = _PointMLP(widths[-1], feat_dim, batch_norm, None)
        self.invariant_dim = self.feat_dim
        self.equivariant_dim = 0
        self.point_dim = self.feat_dim

    def forward(self, points: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` with optional ``mask (B, N)`` (True = valid)."""
        mask = check_points_mask(points, mask)
        h = center_points(points, mask) if self.center else zero_padded(points, mask)
        for layer in self.mlp:
            h = layer(h, mask)
        h = self.out(h, mask)  # (B, N, F)
        g = _pool(h, mask, self.pooling, dim=1)
        return EncoderOutput(invariant=g, equivariant=None, point_features=zero_rows(h, mask))


class DGCNN(nn.Module):
    """DGCNN encoder (Wang et al. 2019): EdgeConv on dynamic kNN graphs.

    Edge features ``concat(x_j - x_i, x_i)`` -> linear + masked batch norm + LeakyReLU(0.2)
    -> pooling over neighbours, for every block; block outputs concatenated -> linear +
    batch norm + LeakyReLU to ``feat_dim`` -> masked pooling over points. Same masking rules
    as :class:`VNDGCNN`; permutation-invariant, translation-invariant with ``center=True``,
    not rotation-equivariant.

    Args:
        k: neighbours per point (including itself).
        feat_dim: output channels ``F``.
        hidden: EdgeConv block widths.
        pooling: ``"max"`` or ``"mean"`` over points.
        neighbor_pooling: ``"max"`` or ``"mean"`` over neighbours.
        center: subtract the masked centroid.
        negative_slope: LeakyReLU slope.
        batch_norm: masked batch norm.

    Shape:
        - points: :math:`(B, N, 3)`, mask: :math:`(B, N)` bool.
        - output: ``invariant (B, F)``, ``equivariant None``, ``point_features (B, N, F)``.
    """

    def __init__(self, k: int = 20, feat_dim: int = 512,
                 hidden: Sequence[int] = (64, 64, 128, 256), pooling: str = "max",
                 neighbor_pooling: str = "max", center: bool = True,
                 negative_slope: float = 0.2, batch_norm: bool = True) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        self.k = int(k)
        self.feat_dim = int(feat_dim)
        self.pooling = _check_pool(pooling, "pooling")
        self.neighbor_pooling = _check_pool(neighbor_pooling, "neighbor_pooling")
        self.center = bool(center)
        self.hidden = tuple(int(h) for h in hidden)
        c_in = 3
        blocks = []
        for h in self.hidden:
            blocks.append(_PointMLP(2 * c_in, h, batch_norm, nn.LeakyReLU(negative_slope)))
            c_in = h
        self.blocks = nn.ModuleList(blocks)
        self.out = _PointMLP(sum(self.hidden), feat_dim, batch_norm, nn.LeakyReLU(negative_slope))
        self.invariant_dim = self.feat_dim
        self.equivariant_dim = 0
        self.point_dim = self.feat_dim

    def forward(self, points: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` with optional ``mask (B, N)`` (True = valid)."""
        mask = check_points_mask(points, mask)
        x = center_points(points, mask) if self.center else zero_padded(points, mask)
        err = centring_error(points, mask) if self.center else None
        B, N, _ = x.shape
        outs = []
        for block in self.blocks:
            # tie-symmetric graph: permutation-invariant also on grids and duplicates
            idx, nmask, w = _knn_neighborhood(x, self.k, mask, input_error=err)  # (B, N, K)
            kk = idx.shape[-1]
            C = x.shape[-1]
            xj = torch.gather(x, 1, idx.reshape(B, N * kk, 1).expand(B, N * kk, C)).view(B, N, kk, C)
            xi = x.unsqueeze(2).expand(B, N, kk, C)
            e = block(torch.cat([xj - xi, xi], dim=-1), nmask)  # (B, N, K, h)
            x = _pool(e, nmask, self.neighbor_pooling, dim=2, weight=w)  # (B, N, h)
            outs.append(x)
        h = self.out(torch.cat(outs, dim=-1), mask)  # (B, N, F)
        g = _pool(h, mask, self.pooling, dim=1)
        return EncoderOutput(invariant=g, equivariant=None, point_features=zero_rows(h, mask))
