"""Vector Neuron point-cloud encoders: ``VNPointNet`` and ``VNDGCNN``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._graph import _knn_neighborhood
from ._output import (
    EncoderOutput,
    center_points,
    centring_error,
    check_points_mask,
    zero_padded,
    zero_rows,
)
from ._vn import (
    VNBatchNorm,
    VNInvariant,
    VNLinear,
    VNLinearLeakyReLU,
    VNMaxPool,
    VNMeanPool,
    _vn_relu,
    vn_edge_features,
)

__all__ = ["VNPointNet", "VNDGCNN"]


def _make_pool(kind: str, channels: int, name: str) -> nn.Module:
    if kind == "mean":
        return VNMeanPool()
    if kind == "max":
        return VNMaxPool(channels)
    raise ValueError(f"{name}: expected 'mean' or 'max', got {kind!r}")


def _vn_to_points(x: Tensor) -> Tensor:
    # (B, C, 3, N) -> (B, N, 3C) for distances in feature space.
    B, C, _, N = x.shape
    return x.permute(0, 3, 1, 2).reshape(B, N, C * 3)


def _gather_neighbors(y: Tensor, idx: Tensor) -> Tensor:
    # y (B, C, 3, N), idx (B, N, k) -> (B, C, 3, N, k) with [..., i, j] = y[..., idx[b, i, j]].
    B, C, _, N = y.shape
    k = idx.shape[-1]
    flat = idx.reshape(B, 1, 1, N * k).expand(B, C, 3, N * k)
    return torch.gather(y, 3, flat).view(B, C, 3, N, k)


def _edge_conv(conv: VNLinearLeakyReLU, x: Tensor, idx: Tensor, cross: bool,
               nmask: Tensor | None) -> Tensor:
    """``conv(vn_edge_features(x, idx, cross), nmask)`` without building the edge tensor.

    By linearity ``W [x_j - x_i; x_i] = W_1 x_j + (W_2 - W_1) x_i``: the channel maps run on
    the N points, and only their results are gathered over the k neighbours (exact up to
    float rounding). The cross-product variant uses the generic path.
    """
    if cross:
        return conv(vn_edge_features(x, idx, cross=True), nmask)
    C = x.shape[1]

    def split_map(w: Tensor) -> Tensor:
        a, b = w[:, :C], w[:, C:]
        y = torch.matmul(torch.cat([a, b - a], dim=0), x.flatten(2))  # flatten: B = 0 too
        y = y.view(x.shape[0], 2 * w.shape[0], 3, x.shape[-1])
        yj, yi = y[:, : w.shape[0]], y[:, w.shape[0]:]
        return _gather_neighbors(yj, idx) + yi.unsqueeze(-1)

    p = split_map(conv.map_to_feat.weight)
    if conv.bn is not None:
        p = conv.bn(p, nmask)
    d = split_map(conv.map_to_dir.weight)
    return _vn_relu(p, d, conv.negative_slope, conv.eps)


def _neighborhood(x: Tensor, k: int, pmask: Tensor | None, err: Tensor | None = None
                  ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Tie-symmetric kNN graph of ``x (B, N, D)``: ``(idx, nmask, weight)``.

    ``nmask``/``weight`` are None when every row has exactly ``k`` unit-weight neighbours and
    nothing is padded (the fast unmasked path, bitwise the plain kNN graph).
    """
    nb = _knn_neighborhood(x, k, pmask, input_error=err)
    if pmask is None and nb.idx.shape[-1] == k and bool(nb.mask.all()):
        return nb.idx, None, None
    return nb.idx, nb.mask, nb.weight


def _pool_neighbors(pool: nn.Module, e: Tensor, nmask: Tensor | None,
                    weight: Tensor | None) -> Tensor:
    if isinstance(pool, VNMeanPool):
        return pool(e, nmask, weight)
    return pool(e, nmask)  # max: over the whole (tie-extended) neighbour set


def _readout(x: Tensor, mask: Tensor, global_pool: nn.Module, std: VNInvariant) -> EncoderOutput:
    # x: per-point VN features (B, F, 3, N).
    B, F, _, N = x.shape
    g = global_pool(x, mask)  # (B, F, 3)
    inv, frame = std(g)  # (B, F, 3), (B, 3, 3)
    point_inv = torch.einsum("bcxn,bjx->bncj", x, frame).reshape(B, N, 3 * F)
    return EncoderOutput(
        invariant=inv.reshape(B, 3 * F),
        equivariant=g,
        point_features=zero_rows(point_inv, mask),
        point_equivariant=zero_rows(x.permute(0, 3, 1, 2), mask),
    )


class VNDGCNN(nn.Module):
    """VN-DGCNN encoder (Deng et al. 2021), as used by SE(3)-equivariant shape assembly.

    EdgeConv blocks on kNN graphs (first on coordinates, then in VN feature space) with edge
    features ``concat(x_j - x_i, x_i)`` (optionally ``x_j × x_i``), VN linear + batch norm +
    leaky ReLU, pooling over neighbours; the block outputs are concatenated and mapped to
    ``feat_dim`` vector channels per point, then pooled over points.

    Equivariance claims (tested): with ``cross=False`` and ``normalize_frame=False`` the
    ``equivariant`` output and per-point equivariant features are O(3)-equivariant, the
    ``invariant`` and ``point_features`` outputs O(3)-invariant (SO(3) only with ``cross`` or
    ``normalize_frame``; ``normalize_frame`` not on clouds with a rotation axis, see
    :class:`~geo3d.nn.VNInvariant`); everything is permutation-equivariant/invariant in the points; with
    ``center=True`` (masked centroid subtracted) every output is translation-invariant.
    Padded points (``mask`` False) are excluded from neighbourhoods, pooling and batch-norm
    statistics.

    Args:
        k: neighbours per point (including the point itself).
        feat_dim: vector channels ``F`` of the per-point and global equivariant features.
        hidden: vector channels of the EdgeConv blocks.
        pooling: pooling over points, ``"mean"`` or ``"max"``.
        neighbor_pooling: pooling over neighbours, ``"mean"`` or ``"max"``.
        cross: add the cross-product edge feature.
        center: subtract the masked centroid of the input points.
        normalize_frame: orthonormal frame in the invariant readout.
        negative_slope: VN leaky-ReLU slope.
        batch_norm: VN batch norm in every block.
        dynamic: recompute the kNN graph from each block's features (DGCNN's dynamic
            graph, the default). ``False`` reuses the coordinate graph in every block: one
            kNN instead of one per block.

    Neighbourhoods and ties: every graph (coordinates and, with ``dynamic``, features) is
    built by :func:`knn_neighborhood`: distances equal up to a tolerance (rounding, see
    there) are ties, and all points tied at the k-th distance share the remaining slots
    (weighted mean pooling; max pooling and batch-norm statistics take each of them once).
    So the claims above hold exactly (float64, to rounding) also on grid-like clouds, with
    duplicate points and under permutations. What can still break them: distances that
    differ by about the tolerance (float64: ~1.5e-8 relative), and, in float32, rounding
    of *feature* distances of a rotated input beyond the float32 tolerance (3.5e-4
    relative), so a small fraction of float32 outputs of the dynamic graph may deviate.

    Shape:
        - points: :math:`(B, N, 3)`, mask: :math:`(B, N)` bool.
        - output: ``invariant (B, 3F)``, ``equivariant (B, F, 3)``,
          ``point_features (B, N, 3F)``, ``point_equivariant (B, N, F, 3)``.
    """

    def __init__(self, k: int = 20, feat_dim: int = 512,
                 hidden: Sequence[int] = (21, 21, 42, 85), pooling: str = "mean",
                 neighbor_pooling: str = "mean", cross: bool = False, center: bool = True,
                 normalize_frame: bool = False, negative_slope: float = 0.2,
                 batch_norm: bool = True, dynamic: bool = True) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        if len(hidden) < 1:
            raise ValueError(f"hidden: expected at least one block width, got {tuple(hidden)}")
        self.k = int(k)
        self.feat_dim = int(feat_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.cross = bool(cross)
        self.center = bool(center)
        self.dynamic = bool(dynamic)
        mult = 3 if cross else 2
        convs, pools = [], []
        c_in = 1
        for h in self.hidden:
            convs.append(VNLinearLeakyReLU(c_in * mult, h, batch_norm=batch_norm,
                                           negative_slope=negative_slope))
            pools.append(_make_pool(neighbor_pooling, h, "neighbor_pooling"))
            c_in = h
        self.convs = nn.ModuleList(convs)
        self.pools = nn.ModuleList(pools)
        self.conv_out = VNLinearLeakyReLU(sum(self.hidden), feat_dim, batch_norm=batch_norm,
                                          share_nonlinearity=True, negative_slope=negative_slope)
        self.global_pool = _make_pool(pooling, feat_dim, "pooling")
        self.std = VNInvariant(feat_dim, normalize_frame=normalize_frame,
                               negative_slope=negative_slope, batch_norm=batch_norm)
        self.invariant_dim = 3 * feat_dim
        self.equivariant_dim = feat_dim
        self.point_dim = 3 * feat_dim

    def forward(self, points: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` with optional ``mask (B, N)`` (True = valid)."""
        mask = check_points_mask(points, mask)
        x = center_points(points, mask) if self.center else zero_padded(points, mask)
        err = centring_error(points, mask) if self.center else None
        feats = x.transpose(1, 2).unsqueeze(1)  # (B, 1, 3, N)
        # Without padding, ties (and with k <= N) the masked code paths are skipped.
        dense = bool(mask.all()) and self.k <= x.shape[1]
        pmask = None if dense else mask
        outs = []
        for i, (conv, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            if i == 0 or self.dynamic:
                idx, nmask, w = _neighborhood(_vn_to_points(feats), self.k, pmask, err)
            e = _edge_conv(conv, feats, idx, self.cross, nmask)  # (B, h, 3, N, K)
            feats = _pool_neighbors(pool, e, nmask, w)  # (B, h, 3, N)
            outs.append(feats)
        h = self.conv_out(torch.cat(outs, dim=1), pmask)  # (B, F, 3, N)
        return _readout(h, mask, self.global_pool, self.std)


class VNPointNet(nn.Module):
    """VN-PointNet encoder (Deng et al. 2021).

    One EdgeConv block on the coordinate kNN graph (a single vector per point carries too
    little for VN layers), then per-point VN MLP layers, a final ``VNLinear`` + VN batch
    norm to ``feat_dim`` channels and pooling over points. Same claims, output layout and
    masking as :class:`VNDGCNN`.

    Args:
        k: neighbours of the first (coordinate) block.
        feat_dim: output vector channels ``F`` (Deng et al.: 1024 // 3 = 341).
        hidden: vector channels of the first block and the per-point layers.
        pooling: ``"mean"`` or ``"max"`` over points.
        neighbor_pooling: ``"mean"`` or ``"max"`` over neighbours.
        cross: add the cross-product edge feature (SO(3) only).
        center: subtract the masked centroid of the input points.
        normalize_frame: orthonormal frame in the invariant readout.
        negative_slope: VN leaky-ReLU slope.
        batch_norm: VN batch norm.

    Shape:
        - points: :math:`(B, N, 3)`, mask: :math:`(B, N)` bool.
        - output: ``invariant (B, 3F)``, ``equivariant (B, F, 3)``,
          ``point_features (B, N, 3F)``, ``point_equivariant (B, N, F, 3)``.
    """

    def __init__(self, k: int = 20, feat_dim: int = 341, hidden: Sequence[int] = (21, 21, 42),
                 pooling: str = "mean", neighbor_pooling: str = "mean", cross: bool = False,
                 center: bool = True, normalize_frame: bool = False,
                 negative_slope: float = 0.2, batch_norm: bool = True) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        if len(hidden) < 1:
            raise ValueError(f"hidden: expected at least one width, got {tuple(hidden)}")
        self.k = int(k)
        self.feat_dim = int(feat_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.cross = bool(cross)
        self.center = bool(center)
        self.conv_pos = VNLinearLeakyReLU(3 if cross else 2, self.hidden[0], batch_norm=batch_norm,
                                          negative_slope=negative_slope)
        self.pool_pos = _make_pool(neighbor_pooling, self.hidden[0], "neighbor_pooling")
        self.mlp = nn.ModuleList(
            VNLinearLeakyReLU(a, b, batch_norm=batch_norm, negative_slope=negative_slope)
            for a, b in zip(self.hidden[:-1], self.hidden[1:], strict=True)
        )
        self.lin_out = VNLinear(self.hidden[-1], feat_dim)
        self.bn_out = VNBatchNorm(feat_dim) if batch_norm else None
        self.global_pool = _make_pool(pooling, feat_dim, "pooling")
        self.std = VNInvariant(feat_dim, normalize_frame=normalize_frame,
                               negative_slope=negative_slope, batch_norm=batch_norm)
        self.invariant_dim = 3 * feat_dim
        self.equivariant_dim = feat_dim
        self.point_dim = 3 * feat_dim

    def forward(self, points: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` with optional ``mask (B, N)`` (True = valid)."""
        mask = check_points_mask(points, mask)
        x = center_points(points, mask) if self.center else zero_padded(points, mask)
        err = centring_error(points, mask) if self.center else None
        feats = x.transpose(1, 2).unsqueeze(1)  # (B, 1, 3, N)
        dense = bool(mask.all()) and self.k <= x.shape[1]
        pmask = None if dense else mask
        idx, nmask, w = _neighborhood(x, self.k, pmask, err)
        e = _edge_conv(self.conv_pos, feats, idx, self.cross, nmask)
        h = _pool_neighbors(self.pool_pos, e, nmask, w)  # (B, h0, 3, N)
        for layer in self.mlp:
            h = layer(h, pmask)
        h = self.lin_out(h)
        if self.bn_out is not None:
            h = self.bn_out(h, pmask)
        return _readout(h, mask, self.global_pool, self.std)
