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

__all__ = ["EPNLocalEncoder", "VNLocalEncoder"]


def _gather_nbrs(y: Tensor, idx: Tensor) -> Tensor:
    """``y (B, C, 3, N)``, ``idx (B, N, K)`` -> ``(B, C, 3, N, K)``, ``[..., i, s] = y[..., idx[i, s]]``."""
    B, C, _, N = y.shape
    K = idx.shape[-1]
    flat = idx.reshape(B, 1, 1, N * K).expand(B, C, 3, N * K)
    return torch.gather(y, 3, flat).view(B, C, 3, N, K)


def _soft_knn_weights(d2: Tensor) -> tuple[Tensor, Tensor]:
    """Soft kNN weights (module docs) from squared neighbour distances ``d2 (B, N, K)``:
    ``w = (1 - d2 / r2)^2`` with ``r2`` the largest ``d2`` of each row (weight 1 on rows
    with ``r2 = 0``, duplicates only). Returns ``w (B, N, K)`` and ``r2 (B, N, 1)``."""
    r2 = d2.amax(-1, keepdim=True)
    pos = r2 > 0
    w = torch.where(pos, (1 - d2 / torch.where(pos, r2, 1)).clamp(min=0) ** 2,
                    torch.ones_like(d2))
    return w, r2


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

    Gradients with respect to ``points`` treat the soft kNN weights as constants: right
    for training the weights, not the exact derivative of the outputs by the coordinates.

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
            w = _soft_knn_weights(rel.detach().square().sum(2)[:, 0])[0]  # (B, N, K)
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


def _icosahedral_tables() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 tables of the 60-element icosahedral group for :class:`EPNLocalEncoder`.

    Returns ``R (60, 3, 3)`` the elements, ``kernel (13, 3)`` the kernel directions (the
    origin and the 12 vertices), ``perm (60, 13)`` with ``R[a] @ kernel[m] =
    kernel[perm[a, m]]``, and ``nbr (60, 13)`` the index of ``R[a] @ R[s]`` for the
    identity and the 12 elements that rotate by 72 degrees (``s`` in a fixed order).
    """
    from geo3d.groups import IcosahedralGroup

    G = IcosahedralGroup()
    R = G.elements(dtype=torch.float64)
    kernel = torch.cat([torch.zeros(1, 3, dtype=torch.float64), G.vertices(torch.float64)])
    moved = torch.einsum("aij,mj->ami", R, kernel)  # (60, 13, 3)
    perm = (moved[:, :, None] - kernel[None, None]).norm(dim=-1).argmin(dim=-1)
    angle = torch.arccos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    near = torch.nonzero((angle - 2 * torch.pi / 5).abs() < 1e-6).flatten()
    steps = torch.cat([torch.zeros(1, dtype=torch.long), near])  # identity + 12 at 72 deg
    nbr = G.cayley_table()[:, steps]  # (60, 13)
    return R, kernel, perm, nbr


class EPNLocalEncoder(nn.Module):
    """Icosahedral group convolution (EPN-style) in pure torch: per point, one feature per
    element of the 60-element rotation group of the icosahedron.

    The reference backbone of ArtEq, without its compiled CUDA kernels. Every point ``i``
    carries features ``F(i, a)`` for the 60 rotations ``R_a``. A block is

    1. a spatial convolution per element: ``sum_j w_ij kappa(R_a^T (x_j - x_i) / r_i - k_m)
       F(j, a)`` for 13 kernel points ``k_m`` (the origin and the icosahedron's 12
       vertices at ``kernel_radius``), a Gaussian correlation ``kappa`` of width
       ``kernel_sigma``, then a linear map over the (kernel point, channel) pairs. The
       kernel set is symmetric under the group, so the rotated correlations are a
       permutation of one set of correlations (computed once per block);
    2. an intra-group convolution: ``F(a) <- sum_s W_s F(a r_s)`` over the identity and the
       12 rotations by 72 degrees (a depthwise weight per step ``s``, then a per-element
       linear map), LayerNorm over the channels and a leaky ReLU.

    The first block starts from constant features. Neighbourhoods are the ``k + 1``
    nearest points with the soft weights of :class:`VNLocalEncoder` (continuous, zero at
    the radius ``r_i``: ties never matter); offsets are divided by ``kernel_scale`` (input
    units: the features see absolute lengths) or, with ``kernel_scale=None``, by ``r_i``
    (scale-free features, which then carry no absolute size). Outputs: per-point invariants = the mean over the 60 elements of ``3F``
    channels (after a nonlinearity); per-point vectors ``V_c = mean_a f_c(a) R_a e_{c mod 3}``.

    Equivariance: for ``g = R_h`` in the group and any translation ``t``, input ``g x + t``
    permutes the features over the elements (``F'(i, a) = F(i, h^{-1} a)``), so the
    invariants are unchanged and the vectors rotate by ``g``, exactly up to rounding
    (float64, tested at 1e-9). For rotations between the group elements it holds only
    approximately; the error is measured in the tests. Local and translation-invariant
    like :class:`VNLocalEncoder`: only offsets within ``len(hidden)`` kNN hops enter.

    Args:
        k: neighbours per point with a positive weight (the ``k+1``-th sets ``r_i``).
        feat_dim: vector channels ``F`` out (invariants: ``3F`` channels).
        hidden: channels of the blocks (``len(hidden)`` blocks; at least 2 each: a LayerNorm
            over one channel would output a constant).
        kernel_radius: distance of the 12 outer kernel points, in units of the kernel scale.
        kernel_sigma: width of the Gaussian kernel correlation, in units of the kernel scale.
        kernel_scale: the kernel scale in input units; ``None`` (default): each point's
            kNN radius ``r_i`` (scale-free).
        negative_slope: leaky-ReLU slope.

    Shape:
        - points: :math:`(B, N, 3)`.
        - output (:class:`geo3d.nn.EncoderOutput`): ``invariant (B, 3F)`` (mean over the
          points), ``equivariant (B, F, 3)`` (mean over the points), ``point_features
          (B, N, 3F)``, ``point_equivariant (B, N, F, 3)``.

    Cost: memory and time grow as ``B N (k+1) 60 13 C`` per block; run it on a subsample
    (``ArtEqNet(num_centers=...)``), as the reference does.

    Gradients with respect to ``points`` treat the kNN radii ``r_i`` and the soft weights as
    constants (as in :class:`VNLocalEncoder`): right for training the weights, not the
    exact derivative of the outputs by the coordinates.

    Raises:
        ValueError: a non-positive ``k``, a width below 2, a non-positive kernel size, a
            ``negative_slope`` outside ``[0, 1)``; ``points`` not ``(B, N, 3)``.

    Source: Chen et al., "Equivariant Point Network for 3D Point Cloud Analysis", CVPR
    2021, arXiv:2103.14147 (separable point/group convolution over the icosahedral group);
    used by Feng et al., ICCV 2023, arXiv:2304.10528 (``HavenFeng/ArtEq``, ``src/so3net.py``,
    2 blocks of widths 32 and 64).

    Example:
        >>> enc = EPNLocalEncoder(k=4, feat_dim=4, hidden=(4, 4)).eval()
        >>> enc(torch.randn(2, 30, 3)).point_equivariant.shape
        torch.Size([2, 30, 4, 3])
    """

    def __init__(self, k: int = 16, feat_dim: int = 64, hidden: Sequence[int] = (32, 64),
                 kernel_radius: float = 0.5, kernel_sigma: float = 0.35,
                 negative_slope: float = 0.2, kernel_scale: float | None = None) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
            raise ValueError(f"feat_dim: expected a positive int, got {feat_dim!r}")
        hidden = tuple(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 2
                             for h in hidden):  # LayerNorm over one channel is a constant
            raise ValueError(f"hidden: expected int block widths >= 2, got {hidden}")
        if isinstance(negative_slope, bool) or not (isinstance(negative_slope, (int, float))
                                                    and 0 <= negative_slope < 1):
            raise ValueError(f"negative_slope: expected a number in [0, 1), got {negative_slope!r}")
        scales = (("kernel_radius", kernel_radius), ("kernel_sigma", kernel_sigma)) + (
            () if kernel_scale is None else (("kernel_scale", kernel_scale),))
        for name, v in scales:
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
        self.k = k
        self.feat_dim = feat_dim
        self.kernel_radius = float(kernel_radius)
        self.kernel_sigma = float(kernel_sigma)
        self.kernel_scale = None if kernel_scale is None else float(kernel_scale)
        self.negative_slope = float(negative_slope)
        R, kernel, perm, nbr = _icosahedral_tables()
        self.register_buffer("rot", R.float(), persistent=False)
        self.register_buffer("kernel", kernel.float(), persistent=False)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("nbr", nbr, persistent=False)
        # flat index of (perm[a, m], a) in an (M, A) layout, in (a, m) order
        self.register_buffer("flat_am", (perm * R.shape[0] + torch.arange(R.shape[0])[:, None])
                             .flatten(), persistent=False)
        self._rot64, self._kernel64 = R, kernel
        M, S = kernel.shape[0], nbr.shape[1]
        self.spatial = nn.ModuleList()
        self.group_w = nn.ParameterList()
        self.mix = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = 1
        for h in hidden:
            self.spatial.append(nn.Linear(M * c_in, h))
            self.group_w.append(nn.Parameter(torch.full((S, h), 1.0 / S)
                                             + 0.1 * torch.randn(S, h) / S ** 0.5))
            self.mix.append(nn.Linear(h, h))
            self.norms.append(nn.LayerNorm(h))
            c_in = h
        self.out_inv = nn.Linear(c_in, 3 * feat_dim)
        self.out_vec = nn.Linear(c_in, feat_dim, bias=False)

    def _tables(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        if dtype == torch.float64:  # exact group elements for float64 checks
            return self._rot64.to(device), self._kernel64.to(device)
        return self.rot.to(dtype), self.kernel.to(dtype)

    def forward(self, points: Tensor) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` (finite; the caller checks values)."""
        from geo3d.ops import knn

        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"points: expected shape (B, N, 3), got {shape}")
        B, N, _ = points.shape
        dtype, dev = points.dtype, points.device
        R, kernel = self._tables(dtype, dev)
        A, M = R.shape[0], kernel.shape[0]
        K = min(self.k + 1, N)
        idx = knn(points.detach(), points.detach(), K).idx  # (B, N, K), self first
        flat = idx.reshape(B, N * K, 1).expand(B, N * K, 3)
        rel = torch.gather(points, 1, flat).view(B, N, K, 3) - points[:, :, None]
        with torch.no_grad():  # soft kNN weights and radii, as in VNLocalEncoder
            w, r2 = _soft_knn_weights(rel.detach().square().sum(-1))  # (B, N, K), (B, N, 1)
            w = w / w.sum(-1, keepdim=True)
        if self.kernel_scale is None:  # scale-free offsets
            u = rel / torch.where(r2 > 0, r2, 1).sqrt()[..., None]  # (B, N, K, 3)
        else:
            u = rel / self.kernel_scale
        # correlation with the unrotated kernel (B, N, K, M); element a sees the permuted
        # set: kappa(R_a^T u - k_m) = kap[..., perm[a, m]]
        dist2 = (u[:, :, :, None] - self.kernel_radius * kernel).square().sum(-1)
        kap = torch.exp(-dist2 / (2 * self.kernel_sigma ** 2)) * w[..., None]
        perm = self.perm  # (A, M)
        F = None
        for spatial, gw, mix, norm in zip(self.spatial, self.group_w, self.mix, self.norms, strict=True):
            if F is None:  # constant input features: the sums of the correlations
                G = kap.sum(2)[:, :, perm, None]  # (B, N, A, M, 1)
            else:
                C = F.shape[-1]
                Fj = torch.gather(F.reshape(B, N, A * C), 1,
                                  idx.reshape(B, N * K, 1).expand(B, N * K, A * C))
                # one matmul per point over the unrotated kernel: (M, K) @ (K, A C)
                Pm = (kap.transpose(-1, -2) @ Fj.view(B, N, K, A * C)).view(B, N, M * A, C)
                G = Pm.index_select(2, self.flat_am)  # (B, N, A M, C): Pm[perm[a, m], a]
            H = spatial(G.reshape(B, N, A, M * G.shape[-1]))  # (B, N, A, h)
            # intra-group conv (depthwise over the steps s): sum_s w_s * H(a r_s)
            H = sum(H.index_select(2, self.nbr[:, s]) * gw[s] for s in range(self.nbr.shape[1]))
            F = nn.functional.leaky_relu(norm(mix(H)), self.negative_slope)
        inv = nn.functional.leaky_relu(self.out_inv(F), self.negative_slope).mean(dim=2)
        f = self.out_vec(F)  # (B, N, A, F)
        cols = R[:, :, torch.arange(self.feat_dim, device=dev) % 3]  # (A, 3, F)
        V = torch.einsum("bnac,axc->bncx", f, cols) / A  # (B, N, F, 3)
        return EncoderOutput(invariant=inv.mean(dim=1), equivariant=V.mean(dim=1),
                             point_features=inv, point_equivariant=V)
