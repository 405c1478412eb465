"""Backbones of the ArtEq network: a local, translation-invariant Vector-Neuron encoder.

:class:`VNLocalEncoder` is the equivariant backbone of :class:`~geo3d.apps.arteq.ArtEqNet`.
It differs from :class:`geo3d.nn.VNDGCNN` in one respect that matters for articulated
bodies: no feature depends on absolute positions. The first EdgeConv sees only relative
offsets ``x_j - x_i`` (VN-DGCNN also feeds ``x_i``, the position relative to the cloud's
centroid), later ones ``[f_j - f_i, f_i]`` of those translation-invariant features, all on
one tie-symmetric coordinate kNN graph (:func:`geo3d.nn.knn_neighborhood`). So the
per-point features are SO(3)-equivariant, translation-invariant and *local*: after ``L``
blocks a point's feature depends only on the points within ``L`` kNN hops, as the
reference's EPN features (relative-position kernels within a radius) do. Moving one limb
therefore leaves the point features of distant body parts unchanged (in eval mode, where
batch norm uses running statistics). Only the global invariant (for segmentation) and the
invariant per-point features (read in a frame of the mean-pooled feature) are global.
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
    knn_neighborhood,
    vn_edge_features,
)

__all__ = ["VNLocalEncoder"]


class VNLocalEncoder(nn.Module):
    """Local, translation-invariant VN EdgeConv encoder (see module docs).

    Args:
        k: neighbours per point (including itself) of the coordinate kNN graph.
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
    duplicates and grid ties, thanks to the tie-symmetric graph).

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

    def forward(self, points: Tensor, input_error: Tensor | float | None = None
                ) -> EncoderOutput:
        """Encode ``points (B, N, 3)``; ``input_error`` as in :func:`knn_neighborhood`
        (relative rounding error already in ``points``, e.g. after centring a far cloud)."""
        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"points: expected shape (B, N, 3), got {shape}")
        B, N, _ = points.shape
        nb = knn_neighborhood(points, self.k, input_error=input_error)
        idx, nmask, w = nb.idx, nb.mask, nb.weight  # (B, N, K)
        K = idx.shape[-1]
        x = points.transpose(1, 2).unsqueeze(1)  # (B, 1, 3, N)
        flat = idx.reshape(B, 1, 1, N * K).expand(B, 1, 3, N * K)
        rel = torch.gather(x, 3, flat).view(B, 1, 3, N, K) - x.unsqueeze(-1)  # x_j - x_i
        outs = []
        f = None
        for i, conv in enumerate(self.convs):
            e = rel if i == 0 else vn_edge_features(f, idx)  # (B, C, 3, N, K)
            f = self.pool(conv(e, nmask), nmask, w)  # (B, h, 3, N)
            outs.append(f)
        h = self.conv_out(torch.cat(outs, dim=1))  # (B, F, 3, N)
        g = h.mean(dim=-1)  # (B, F, 3)
        inv, frame = self.std(g)  # (B, F, 3), (B, 3, 3): O(3)-invariant / equivariant
        point_inv = torch.einsum("bcxn,bjx->bncj", h, frame).reshape(B, N, 3 * self.feat_dim)
        return EncoderOutput(invariant=inv.reshape(B, -1), equivariant=g,
                             point_features=point_inv, point_equivariant=h.permute(0, 3, 1, 2))
