"""Backbones of the ArtEq network: a local, translation-invariant Vector-Neuron encoder.

:class:`VNLocalEncoder` is the equivariant backbone of :class:`~geo3d.apps.arteq.ArtEqNet`.
It differs from :class:`geo3d.nn.VNDGCNN` in one respect that matters for articulated
bodies: no feature depends on absolute positions. The first EdgeConv sees only relative
offsets ``x_j - x_i`` (VN-DGCNN also feeds ``x_i``, the position relative to the cloud's
centroid), later ones ``[f_j - f_i, f_i]`` of those translation-invariant features, all on
one coordinate neighbourhood graph with *soft* kNN weights (below). So the
per-point features are SO(3)-equivariant, translation-invariant and *local*: after ``L``
blocks a point's feature depends only on the points within ``L`` kNN hops, as the
reference's EPN features (relative-position kernels within a radius) do. Moving one limb
therefore leaves the point features of distant body parts unchanged (in eval mode, where
batch norm uses running statistics). Only the global invariant (for segmentation) and the
invariant per-point features (read in a frame of the mean-pooled feature) are global.

Soft kNN neighbourhoods. Point ``i`` pools its ``k + 1`` nearest points ``j`` with weights
``w_ij = (1 - d_ij^2 / r_i^2)^2`` where ``r_i`` is the distance to the ``(k+1)``-th of them
(weighted mean). The weights are continuous functions of the distances and vanish at the
boundary, so points entering or leaving the set carry weight 0: which of several points
tied at the boundary is picked never matters (exact equivariance on grids and duplicates),
and rounding can no longer flip a neighbour in or out. A hard kNN graph (also the
tie-tolerant :func:`geo3d.nn.knn_neighborhood`) switches a neighbour's weight between 0 and 1
when two distances are within its tie tolerance in one copy of a cloud and just outside it
in the rotated copy: on float32 body scans that happened for a few points per thousand and
gave errors of ~1e-2 in the part rotations; with soft weights the float32 error is at the
rounding level (see the tests). Duplicate points (``r_i = 0``) pool their identical copies
with weight 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from geo3d.nn import (
    EncoderOutput,
    VNInvariant,
    VNLinearLeakyReLU,
    VNMeanPool,
)

__all__ = ["VNLocalEncoder"]


def _gather_nbrs(y: Tensor, idx: Tensor) -> Tensor:
    """``y (B, C, 3, N)``, ``idx (B, N, K)`` -> ``(B, C, 3, N, K)``, ``[..., i, s] = y[..., idx[i, s]]``."""
    B, C, _, N = y.shape
    K = idx.shape[-1]
    flat = idx.reshape(B, 1, 1, N * K).expand(B, C, 3, N * K)
    return torch.gather(y, 3, flat).view(B, C, 3, N, K)


def _edge_conv(conv: VNLinearLeakyReLU, f: Tensor, idx: Tensor, nmask: Tensor) -> Tensor:
    """``conv(vn_edge_features(f, idx), nmask)`` without building the ``2C``-channel edge
    tensor: by linearity ``W [f_j - f_i; f_i] = W_1 f_j + (W_2 - W_1) f_i``, so the channel
    maps run on the ``N`` points and only their results are gathered over the neighbours
    (equal up to rounding; tested against the plain composition)."""
    from geo3d.nn._vn import _vn_relu  # the VN leaky ReLU of VNLinearLeakyReLU itself

    B, C, _, N = f.shape

    def mix(weight: Tensor) -> Tensor:
        a, b = weight[:, :C], weight[:, C:]
        out = weight.shape[0]
        y = torch.matmul(torch.cat([a, b - a], dim=0), f.flatten(2)).view(B, 2 * out, 3, N)
        return _gather_nbrs(y[:, :out], idx) + y[:, out:].unsqueeze(-1)

    p = mix(conv.map_to_feat.weight)
    if conv.bn is not None:
        p = conv.bn(p, nmask)
    return _vn_relu(p, mix(conv.map_to_dir.weight), conv.negative_slope, conv.eps)


class VNLocalEncoder(nn.Module):
    """Local, translation-invariant VN EdgeConv encoder (see module docs).

    Args:
        k: neighbours per point (including itself) with a positive weight; the ``k+1``-th
            sets the radius of the soft kNN weights (see module docs).
        feat_dim: output vector channels ``F`` per point.
        hidden: vector channels of the EdgeConv blocks (``L = len(hidden)`` hops).
        batch_norm: VN batch norm in every block.
        negative_slope: VN leaky-ReLU slope.

    Shape:
        - points: :math:`(B, N, 3)` (any position; only differences are used).
        - output (:class:`geo3d.nn.EncoderOutput`): ``invariant (B, 3F)``, ``equivariant
          (B, F, 3)`` (mean-pooled), ``point_features (B, N, 3F)`` (O(3)-invariant),
          ``point_equivariant (B, N, F, 3)``.

    Equivariance: for ``g`` in O(3) and any ``t``, input ``g x + t`` gives equivariant
    outputs rotated by ``g`` and the same invariant ones (exact up to rounding, also with
    duplicates and grid ties, thanks to the soft kNN weights).

    Source: Deng et al., "Vector Neurons", ICCV 2021, arXiv:2104.12229 (layers); the
    locality follows Feng et al., ICCV 2023, arXiv:2304.10528 (``HavenFeng/ArtEq``).

    Example:
        >>> enc = VNLocalEncoder(k=4, feat_dim=8, hidden=(4, 4)).eval()
        >>> enc(torch.randn(2, 30, 3)).point_equivariant.shape
        torch.Size([2, 30, 8, 3])
    """

    def __init__(self, k: int = 16, feat_dim: int = 64, hidden: Sequence[int] = (32, 32, 64),
                 batch_norm: bool = True, negative_slope: float = 0.2) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden: expected positive block widths, got {hidden}")
        self.k = k
        self.feat_dim = int(feat_dim)
        convs = []
        c_in = 1
        for i, h in enumerate(hidden):
            convs.append(VNLinearLeakyReLU(c_in if i == 0 else 2 * c_in, h,
                                           batch_norm=batch_norm, negative_slope=negative_slope))
            c_in = h
        self.convs = nn.ModuleList(convs)
        self.pool = VNMeanPool()
        self.conv_out = VNLinearLeakyReLU(sum(hidden), feat_dim, batch_norm=batch_norm,
                                          share_nonlinearity=True, negative_slope=negative_slope)
        # no batch norm in the global frame: its statistics would be over B clouds only
        # (ArtEq trains with batch 2), a large train/eval gap
        self.std = VNInvariant(feat_dim, batch_norm=False, negative_slope=negative_slope)

    def forward(self, points: Tensor) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` (finite; the caller checks values)."""
        from geo3d.ops import knn

        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"points: expected shape (B, N, 3), got {shape}")
        B, N, _ = points.shape
        K = min(self.k + 1, N)
        idx = knn(points.detach(), points.detach(), K).idx  # (B, N, K), self first
        x = points.transpose(1, 2).unsqueeze(1)  # (B, 1, 3, N)
        rel = _gather_nbrs(x, idx) - x.unsqueeze(-1)  # x_j - x_i, (B, 1, 3, N, K)
        with torch.no_grad():  # soft kNN weights: 1 at the point, 0 at the (k+1)-th
            d2 = rel.detach().square().sum(2)[:, 0]  # (B, N, K)
            r2 = d2.amax(-1, keepdim=True)
            w = torch.where(r2 > 0, (1 - d2 / torch.where(r2 > 0, r2, 1)).clamp(min=0) ** 2,
                            torch.ones_like(d2))
            nmask = w > 0
        outs = []
        f = None
        for i, conv in enumerate(self.convs):
            e = conv(rel, nmask) if i == 0 else _edge_conv(conv, f, idx, nmask)  # (B,h,3,N,K)
            f = self.pool(e, nmask, w)  # (B, h, 3, N)
            outs.append(f)
        h = self.conv_out(torch.cat(outs, dim=1))  # (B, F, 3, N)
        g = h.mean(dim=-1)  # (B, F, 3)
        inv, frame = self.std(g)  # (B, F, 3), (B, 3, 3): O(3)-invariant / equivariant
        point_inv = torch.einsum("bcxn,bjx->bncj", h, frame).reshape(B, N, 3 * self.feat_dim)
        return EncoderOutput(invariant=inv.reshape(B, -1), equivariant=g,
                             point_features=point_inv, point_equivariant=h.permute(0, 3, 1, 2))
