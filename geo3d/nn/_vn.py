"""Vector Neuron layers (Deng et al., "Vector Neurons", ICCV 2021).

Features are lists of 3D vectors, shape :math:`(B, C, 3, *S)`: ``C`` vector channels, the
xyz axis at dim 2 and any number of trailing set dims ``S`` (points, neighbours). A rotation
(or any orthogonal matrix) ``R`` acts on every vector: ``x[b, c, :, s] -> R @ x[b, c, :, s]``.
All layers here commute with that action for every ``R`` in O(3) (``VNInvariant`` with
``normalize_frame=True`` only for SO(3)). Masks have shape :math:`(B, *S)` (True = valid).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._batchnorm import MaskedBatchNorm

__all__ = [
    "VNLinear",
    "VNLeakyReLU",
    "VNBatchNorm",
    "VNLinearLeakyReLU",
    "VNMaxPool",
    "VNMeanPool",
    "VNInvariant",
    "vn_edge_features",
]

EPS = 1e-6


def _check_vn(x: Tensor, channels: int, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() < 3 or x.shape[2] != 3 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected VN features of shape (B, {channels}, 3, ...), got {shape}")


def _check_mask(mask: Tensor | None, x: Tensor) -> None:
    if mask is None:
        return
    expected = x.shape[:1] + x.shape[3:]
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask: expected a bool tensor of shape {tuple(expected)}, got "
                         f"{type(mask).__name__}")
    if mask.shape != expected or mask.dtype != torch.bool:
        raise ValueError(
            f"mask: expected bool tensor of shape {tuple(expected)}, got {mask.dtype} {tuple(mask.shape)}")


def _channel_mix(linear: nn.Linear, x: Tensor) -> Tensor:
    # x: (B, C_in, 3, *S) -> (B, C_out, 3, *S); mixes channels only (one batched matmul
    # on the contiguous (B, C_in, 3 * prod(S)) view, no transposes).
    w = linear.weight  # (C_out, C_in)
    out = torch.matmul(w, x.flatten(2))  # flatten: B = 0 too
    return out.view(x.shape[0], w.shape[0], *x.shape[2:])


def _dot3(a: Tensor, b: Tensor) -> Tensor:
    # Inner product over the xyz axis (dim 2), kept: (B, C, 3, *S) -> (B, C, 1, *S).
    # vecdot is several times faster (forward + backward) than (a * b).sum(2) or slicing.
    return torch.linalg.vecdot(a, b, dim=2).unsqueeze(2)


def _safe_norm(x: Tensor) -> Tensor:
    # |x| over dim 2, kept; gradient 0 (not NaN) at x = 0.
    n2 = _dot3(x, x)
    pos = n2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, n2, torch.ones_like(n2))), torch.zeros_like(n2))


class VNLinear(nn.Module):
    """Channel-mixing linear map on vector features (no bias: a bias breaks equivariance).

    Args:
        in_channels: input vector channels ``C_in``.
        out_channels: output vector channels ``C_out``.

    Shape:
        - x: :math:`(B, C_{in}, 3, *S)` -> :math:`(B, C_{out}, 3, *S)`.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.map = nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_vn(x, self.in_channels)
        return _channel_mix(self.map, x)


def _vn_relu(p: Tensor, d: Tensor, negative_slope: float, eps: float) -> Tensor:
    # Keep p where <p, d> >= 0; otherwise remove its component along d. Mixed with identity
    # by the negative slope s:  s p + (1 - s) q  =  p - (1 - s) [<p,d> < 0] <p,d>/(|d|^2+eps) d,
    # computed in that second form (one full-size temporary instead of five).
    dot = _dot3(p, d)  # (B, C, 1, *S)
    coef = dot / (_dot3(d, d) + eps)
    coef = torch.where(dot < 0, coef, torch.zeros_like(coef))
    if negative_slope != 0.0:
        coef = coef * (1.0 - negative_slope)
    return p - coef * d


class VNLeakyReLU(nn.Module):
    """Vector-neuron leaky ReLU with a learned direction ``k = U x`` per channel.

    ``q = x`` where ``<x, k> >= 0`` else ``x - <x, k>/(|k|^2 + eps) k``; output
    ``s x + (1 - s) q`` with negative slope ``s``.

    Args:
        channels: vector channels ``C``.
        share_nonlinearity: one learned direction for all channels instead of one each.
        negative_slope: ``s`` in ``[0, 1)``.
        eps: added to ``|k|^2`` in the denominator.

    Shape:
        - x: :math:`(B, C, 3, *S)` -> same shape.
    """

    def __init__(self, channels: int, share_nonlinearity: bool = False,
                 negative_slope: float = 0.2, eps: float = EPS) -> None:
        super().__init__()
        if not 0.0 <= negative_slope < 1.0:
            raise ValueError(f"negative_slope: expected a value in [0, 1), got {negative_slope}")
        self.channels = int(channels)
        self.map_to_dir = nn.Linear(channels, 1 if share_nonlinearity else channels, bias=False)
        self.negative_slope = float(negative_slope)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        _check_vn(x, self.channels)
        d = _channel_mix(self.map_to_dir, x)
        return _vn_relu(x, d, self.negative_slope, self.eps)


class VNBatchNorm(nn.Module):
    """Batch norm of vector norms; directions are kept (up to sign).

    ``x -> x / (|x| + eps) * BN(|x|)`` with BN over the norms ``|x|`` (shape
    :math:`(B, C, *S)`); as in Deng et al., a negative normalised norm flips the vector. Padded entries (``mask`` False) are excluded from the batch
    statistics. Note that in training mode the statistics mix samples of the batch, so the
    output of one sample depends on the others (equivariance holds for one rotation applied
    to the whole batch, or in eval mode per sample).

    Args:
        channels: vector channels ``C``.
        eps: added to the norm before dividing and to the BN variance.
        momentum: running-statistics momentum.

    Shape:
        - x: :math:`(B, C, 3, *S)`, mask: :math:`(B, *S)` -> same shape as x.
    """

    def __init__(self, channels: int, eps: float = EPS, momentum: float = 0.1) -> None:
        super().__init__()
        self.channels = int(channels)
        self.eps = float(eps)
        self.bn = MaskedBatchNorm(channels, eps=1e-5, momentum=momentum)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        _check_vn(x, self.channels)
        _check_mask(mask, x)
        norm = _safe_norm(x)  # (B, C, 1, *S)
        norm_bn = self.bn(norm.squeeze(2), mask).unsqueeze(2)
        return x * (norm_bn / (norm + self.eps))


class VNLinearLeakyReLU(nn.Module):
    """``VNLinear`` -> optional ``VNBatchNorm`` -> ``VNLeakyReLU`` (direction from the input).

    As in Deng et al., the nonlinearity direction is a learned linear map of the layer
    *input*, applied to the linear (and normalised) features.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        batch_norm: use :class:`VNBatchNorm` after the linear map.
        share_nonlinearity: one direction for all output channels.
        negative_slope: leaky slope in ``[0, 1)``.
        eps: denominator epsilon.

    Shape:
        - x: :math:`(B, C_{in}, 3, *S)`, mask: :math:`(B, *S)` -> :math:`(B, C_{out}, 3, *S)`.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True,
                 share_nonlinearity: bool = False, negative_slope: float = 0.2,
                 eps: float = EPS) -> None:
        super().__init__()
        if not 0.0 <= negative_slope < 1.0:
            raise ValueError(f"negative_slope: expected a value in [0, 1), got {negative_slope}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.map_to_feat = nn.Linear(in_channels, out_channels, bias=False)
        self.bn = VNBatchNorm(out_channels, eps=eps) if batch_norm else None
        self.map_to_dir = nn.Linear(in_channels, 1 if share_nonlinearity else out_channels,
                                    bias=False)
        self.negative_slope = float(negative_slope)
        self.eps = float(eps)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        _check_vn(x, self.in_channels)
        _check_mask(mask, x)
        p = _channel_mix(self.map_to_feat, x)
        if self.bn is not None:
            p = self.bn(p, mask)
        d = _channel_mix(self.map_to_dir, x)
        return _vn_relu(p, d, self.negative_slope, self.eps)


class VNMaxPool(nn.Module):
    """Max pooling over the last dim: per channel, keep the vector with the largest
    projection on a learned direction ``k = U x``.

    Ties: projections within ``sqrt(eps) * max|projection|`` of the largest (``eps`` of the
    dtype; rounding-level differences, e.g. between mirror-image neighbours on a grid, or
    between a cloud and its rotated copy) count as equal, and the tied vectors are
    averaged. So the result does not depend on the order of the entries and is exactly
    equivariant also when several entries tie (a plain argmax would pick one by position).

    Args:
        channels: ``C``.

    Shape:
        - x: :math:`(B, C, 3, *S, M)`, mask: :math:`(B, *S, M)` -> :math:`(B, C, 3, *S)`.
          Masked entries are never selected (a slice with no valid entry selects index 0).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = int(channels)
        self.map_to_dir = nn.Linear(channels, channels, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        _check_vn(x, self.channels)
        if x.dim() < 4:
            raise ValueError(f"x: expected at least one set dim to pool, got shape {tuple(x.shape)}")
        _check_mask(mask, x)
        d = _channel_mix(self.map_to_dir, x)
        dot = _dot3(x, d).squeeze(2)  # (B, C, *S, M)
        valid = None if mask is None else mask.unsqueeze(1).expand_as(dot)
        if valid is not None:
            dot = dot.masked_fill(~valid, float("-inf"))
        idx = dot.argmax(dim=-1, keepdim=True)  # (B, C, *S, 1)
        best = torch.gather(x, -1, idx.unsqueeze(2).expand(*x.shape[:-1], 1)).squeeze(-1)
        with torch.no_grad():
            mx = dot.gather(-1, idx)
            mag = dot.abs() if valid is None else torch.where(valid, dot.abs(), 0)
            tol = torch.finfo(x.dtype).eps ** 0.5 * mag.amax(-1, keepdim=True)
            sel = dot >= mx - tol
            if valid is not None:
                sel = sel & valid
            count = sel.sum(-1)  # (B, C, *S)
            tied = count > 1
        if not bool(tied.any()):
            return best
        s = sel.unsqueeze(2)
        avg = torch.where(s, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)
        avg = avg / count.clamp(min=1).unsqueeze(2).to(x.dtype)
        return torch.where(tied.unsqueeze(2), avg, best)


class VNMeanPool(nn.Module):
    """Masked (optionally weighted) mean over the last dim.

    With ``weight`` (e.g. the tie-sharing weights of :func:`geo3d.nn.knn_neighborhood`) the
    result is ``sum_m w_m x_m / sum_m w_m`` over the valid entries (0 where no weight).

    Shape:
        - x: :math:`(B, C, 3, *S, M)`, mask and weight: :math:`(B, *S, M)` ->
          :math:`(B, C, 3, *S)`.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None,
                weight: Tensor | None = None) -> Tensor:
        if x.dim() < 4 or x.shape[2] != 3:
            raise ValueError(f"x: expected shape (B, C, 3, ..., M), got {tuple(x.shape)}")
        if weight is not None:
            expected = x.shape[:1] + x.shape[3:]
            if not isinstance(weight, Tensor) or weight.shape != expected:
                shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
                raise ValueError(f"weight: expected shape {tuple(expected)}, got {shape}")
            _check_mask(mask, x)
            w = weight.unsqueeze(1).unsqueeze(2)
            if mask is not None:
                w = torch.where(mask.unsqueeze(1).unsqueeze(2), w, torch.zeros_like(w))
            num = torch.where(w != 0, x * w, torch.zeros((), dtype=x.dtype, device=x.device))
            den = w.to(x.dtype).sum(-1)
            return num.sum(-1) / torch.where(den > 0, den, torch.ones_like(den))
        if mask is None:
            return x.mean(dim=-1)
        _check_mask(mask, x)
        m = mask.unsqueeze(1).unsqueeze(2)
        num = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)
        den = m.to(x.dtype).sum(-1).clamp_min(1.0)
        return num / den


class VNInvariant(nn.Module):
    """Invariant readout through a learned equivariant frame (VN "std feature").

    Three frame vectors ``z_j`` (shape :math:`(B, 3, 3, *S)`, row ``j`` = vector ``z_j``) are
    predicted from ``x`` by VN layers; the output expresses every channel in that frame,
    ``inv[b, c, j] = <x[b, c], z[b, j]>``, which is O(3)-invariant. With
    ``normalize_frame=True`` the frame is orthonormalised (Gram–Schmidt on two predicted
    vectors, the third their cross product): SO(3)-invariant only, and only where the two
    predicted vectors are not parallel: on a cloud with a rotation axis (collinear points,
    two distinct points, a cloud symmetric about an axis, points on a sphere) every
    equivariant vector lies on the axis, Gram–Schmidt normalises rounding noise, and the
    output changes with the rotation, the row order and the batch (an audit measured up to
    8e-4 relative). The unnormalised frame (the default) has no such inputs.

    Args:
        in_channels: ``C``.
        normalize_frame: orthonormalise the frame (see above).
        negative_slope: leaky slope of the internal VN layers.
        batch_norm: use VN batch norm in the internal layers.

    Shape:
        - x: :math:`(B, C, 3, *S)`, mask: :math:`(B, *S)` ->
          ``(inv (B, C, 3, *S), frame (B, 3, 3, *S))``.
    """

    def __init__(self, in_channels: int, normalize_frame: bool = False,
                 negative_slope: float = 0.2, batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.normalize_frame = bool(normalize_frame)
        c2 = max(in_channels // 2, 1)
        c4 = max(in_channels // 4, 1)
        self.vn1 = VNLinearLeakyReLU(in_channels, c2, batch_norm=batch_norm,
                                     negative_slope=negative_slope)
        self.vn2 = VNLinearLeakyReLU(c2, c4, batch_norm=batch_norm, negative_slope=negative_slope)
        self.vn_lin = nn.Linear(c4, 2 if normalize_frame else 3, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vn(x, self.in_channels)
        _check_mask(mask, x)
        z = self.vn2(self.vn1(x, mask), mask)
        z = _channel_mix(self.vn_lin, z)  # (B, 2|3, 3, *S)
        if self.normalize_frame:
            v1, v2 = z[:, 0], z[:, 1]
            u1 = torch.nn.functional.normalize(v1, dim=1, eps=1e-12)
            v2 = v2 - (v2 * u1).sum(1, keepdim=True) * u1
            u2 = torch.nn.functional.normalize(v2, dim=1, eps=1e-12)
            u3 = torch.cross(u1, u2, dim=1)
            z = torch.stack([u1, u2, u3], dim=1)
        inv = torch.einsum("bcx...,bjx...->bcj...", x, z)
        return inv, z


def vn_edge_features(x: Tensor, idx: Tensor, cross: bool = False) -> Tensor:
    """VN graph-convolution edge features ``concat(x_j - x_i, x_i[, x_j × x_i])``.

    Args:
        x: VN features, shape :math:`(B, C, 3, N)`.
        idx: neighbour indices, long, shape :math:`(B, N, k)` (into the N axis).
        cross: also append the cross product ``x_j × x_i`` (per channel): SO(3)- but not
            O(3)-equivariant.

    Returns:
        edge features of shape :math:`(B, 2C, 3, N, k)` (``3C`` with ``cross``), channel
        order ``[x_j - x_i, x_i(, x_j × x_i)]``.
    """
    if x.dim() != 4 or x.shape[2] != 3:
        raise ValueError(f"x: expected shape (B, C, 3, N), got {tuple(x.shape)}")
    B, C, _, N = x.shape
    if idx.dim() != 3 or idx.shape[:2] != (B, N):
        raise ValueError(f"idx: expected shape (B, N, k) = ({B}, {N}, k), got {tuple(idx.shape)}")
    k = idx.shape[2]
    flat = idx.reshape(B, 1, 1, N * k).expand(B, C, 3, N * k)
    xj = torch.gather(x, 3, flat).view(B, C, 3, N, k)
    xi = x.unsqueeze(-1).expand(B, C, 3, N, k)
    feats = [xj - xi, xi]
    if cross:
        feats.append(torch.cross(xj, xi, dim=2))
    return torch.cat(feats, dim=1)
