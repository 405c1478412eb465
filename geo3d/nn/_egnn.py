"""E(n)-equivariant graph neural network encoder (Satorras et al., ICML 2021).

Reference: V. G. Satorras, E. Hoogeboom, M. Welling, "E(n) Equivariant Graph Neural
Networks", ICML 2021, arXiv:2102.09844 (normalised coordinate update: their Sec. 3 and the
official code's ``normalize``/``tanh`` options, https://github.com/vgsatorras/egnn).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._graph import _knn_neighborhood, weighted_mean
from ._output import (
    EncoderOutput,
    centring_error,
    check_points_mask,
    masked_mean,
    zero_padded,
    zero_rows,
)

__all__ = ["EGNN", "EGNNLayer"]


def _mlp(c_in: int, c_hidden: int, c_out: int, last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(c_in, c_hidden), nn.SiLU(), nn.Linear(c_hidden, c_out)]
    if last_act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class EGNNLayer(nn.Module):
    """One EGNN layer on a dense neighbourhood graph.

    ``m_ij = φ_e(h_i, h_j, |x_i - x_j|²)``,
    ``x_i += mean_j (x_i - x_j)/(|x_i - x_j| + 1) tanh(φ_x(m_ij))``,
    ``h_i += φ_h(h_i, mean_j m_ij)``; means run over valid neighbours only (weighted by
    ``weight`` when given, e.g. the tie-sharing weights of :func:`knn_neighborhood`).
    The coordinate step is the paper's normalised update with the official code's ``tanh``
    bound, so one layer moves a point by less than one length unit. E(3)-equivariant in
    ``x`` (rotations, reflections, translations), invariant in ``h``.

    Args:
        hidden_dim: node feature width ``H``.
        update_coords: update the coordinates (otherwise they pass through).

    Shape:
        - h: :math:`(B, N, H)`, x: :math:`(B, N, 3)`, idx: :math:`(B, N, K)` long,
          nbr_mask: :math:`(B, N, K)` bool, weight: :math:`(B, N, K)` or None
          -> ``(h (B, N, H), x (B, N, 3))``.
    """

    def __init__(self, hidden_dim: int, update_coords: bool = True) -> None:
        super().__init__()
        self.hidden_dim = int(hidden_dim)
        self.phi_e = _mlp(2 * hidden_dim + 1, hidden_dim, hidden_dim)
        self.phi_h = _mlp(2 * hidden_dim, hidden_dim, hidden_dim, last_act=False)
        self.phi_x = _mlp(hidden_dim, hidden_dim, 1, last_act=False) if update_coords else None

    def forward(self, h: Tensor, x: Tensor, idx: Tensor, nbr_mask: Tensor,
                weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, N, H = h.shape
        K = idx.shape[-1]
        flat = idx.reshape(B, N * K)
        hj = torch.gather(h, 1, flat.unsqueeze(-1).expand(B, N * K, H)).view(B, N, K, H)
        xj = torch.gather(x, 1, flat.unsqueeze(-1).expand(B, N * K, 3)).view(B, N, K, 3)
        diff = x.unsqueeze(2) - xj  # (B, N, K, 3)
        d2 = (diff * diff).sum(-1, keepdim=True)
        hi = h.unsqueeze(2).expand(B, N, K, H)
        m = self.phi_e(torch.cat([hi, hj, d2], dim=-1))  # (B, N, K, H)
        w = nbr_mask.to(h.dtype) if weight is None else torch.where(nbr_mask, weight, 0)
        w = w.unsqueeze(-1)
        if self.phi_x is not None:
            step = torch.tanh(self.phi_x(m))  # (B, N, K, 1), bounded
            # |x_i - x_j| with a zero (not NaN) gradient at coincident points
            pos = d2 > 0
            d = torch.where(pos, torch.sqrt(torch.where(pos, d2, 1)), 0)
            x = x + weighted_mean(diff / (d + 1.0) * step, w, dim=2)
        agg = weighted_mean(m, w, dim=2)  # (B, N, H)
        h = h + self.phi_h(torch.cat([h, agg], dim=-1))
        return h, x


class EGNN(nn.Module):
    """EGNN point-cloud encoder with the geo3d encoder interface.

    Node features start from a learned constant (the input has coordinates only); the graph
    is the kNN graph of the input points (``k``, built by :func:`knn_neighborhood`: points
    tied at the k-th distance share the last slots, so grids and duplicates keep the claims
    exact) or the complete graph on valid points (``k=None``). After the layers,
    ``invariant`` is the masked mean of a linear read-out of the node features,
    ``equivariant`` the masked mean of ``w_ic (x_i - x̄)`` (learned invariant weights ``w``
    times the updated, centred coordinates).

    Scale: the layers run on coordinates normalised per cloud, ``(x - x̄) / s`` with ``s`` the
    RMS distance of the valid points to their centroid (computed in float64; ``s = 1`` for a
    cloud of coincident points), and the coordinate outputs are scaled back by ``s``. With
    the bounded (``tanh``) normalised coordinate update of :class:`EGNNLayer`, no input
    scale can overflow (tested for 8 layers at scales 1e-3 to 1e4 in float32), and the
    encoder is *scale-equivariant*: for ``a > 0``, ``f(a x)`` has the same ``invariant`` and
    ``point_features`` and ``a`` times the ``equivariant``/``point_equivariant`` outputs of
    ``f(x)``. Absolute size is therefore not an input feature (pass it separately if it
    matters).

    Claims (tested): E(3) — ``invariant``/``point_features`` are invariant and
    ``equivariant``/``point_equivariant`` are O(3)-equivariant and translation-invariant,
    under rotations, reflections and translations of the input; scale-equivariant as above;
    permutation-equivariant; padded points change nothing.

    Args:
        hidden_dim: node feature width.
        num_layers: number of EGNN layers.
        out_dim: invariant output width ``C``.
        vector_dim: equivariant output channels ``V``.
        k: neighbours per point (including itself), or None for the complete graph.

    Shape:
        - points: :math:`(B, N, 3)`, mask: :math:`(B, N)` bool.
        - output: ``invariant (B, C)``, ``equivariant (B, V, 3)``,
          ``point_features (B, N, hidden_dim)``, ``point_equivariant (B, N, V, 3)``.

    Raises:
        ValueError: (forward) ``points`` not ``(B, N, 3)`` floating with ``N >= 1``, ``mask``
            not bool ``(B, N)``, or NaN/inf in a valid point (with value checks on, see
            :func:`geo3d.rotations.set_value_checks`).

    Example:
        >>> enc = EGNN(hidden_dim=8, num_layers=2, out_dim=4, vector_dim=2, k=4)
        >>> out = enc(torch.randn(2, 10, 3))
        >>> out.invariant.shape, out.equivariant.shape
        (torch.Size([2, 4]), torch.Size([2, 2, 3]))
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 4, out_dim: int = 128,
                 vector_dim: int = 16, k: int | None = 16) -> None:
        super().__init__()
        if k is not None and k < 1:
            raise ValueError(f"k: expected a positive integer or None, got {k}")
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.k = k
        self.h0 = nn.Parameter(torch.randn(hidden_dim) * 0.1)
        self.layers = nn.ModuleList(EGNNLayer(hidden_dim) for _ in range(num_layers))
        self.inv_out = nn.Linear(hidden_dim, out_dim)
        self.vec_weights = nn.Linear(hidden_dim, vector_dim)
        self.invariant_dim = int(out_dim)
        self.equivariant_dim = int(vector_dim)
        self.point_dim = int(hidden_dim)

    def forward(self, points: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` with optional ``mask (B, N)`` (True = valid)."""
        mask = check_points_mask(points, mask)
        x, scale = _normalize(points, mask)  # (B, N, 3) unit RMS radius, (B,)
        B, N, _ = x.shape
        if self.k is None:
            idx = torch.arange(N, device=x.device).view(1, 1, N).expand(B, N, N)
            nbr_mask = mask.unsqueeze(1) & mask.unsqueeze(2)
            weight = None
        else:
            idx, nbr_mask, weight = _knn_neighborhood(
                x, self.k, mask, input_error=centring_error(points, mask))
        h = self.h0.to(x.dtype).expand(B, N, -1)
        for layer in self.layers:
            h, x = layer(h, x, idx, nbr_mask, weight)
        pm = mask.unsqueeze(-1)
        inv = masked_mean(self.inv_out(h), pm, dim=1)  # (B, C)
        xc = (x - masked_mean(x, pm, dim=1).unsqueeze(1)) * scale.view(B, 1, 1)  # (B, N, 3)
        pvec = self.vec_weights(h).unsqueeze(-1) * xc.unsqueeze(2)  # (B, N, V, 3)
        vec = masked_mean(pvec, pm.unsqueeze(-1), dim=1)  # (B, V, 3)
        return EncoderOutput(invariant=inv, equivariant=vec, point_features=zero_rows(h, mask),
                             point_equivariant=zero_rows(pvec, mask))


def _normalize(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``((x - x̄) / s, s)`` per cloud in float64, cast back; padded points become 0.

    ``s`` = RMS distance of the valid points to their centroid, 1 where it is 0.
    """
    x = zero_padded(points, mask)
    wide = x.to(torch.float64) if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x
    pm = mask.unsqueeze(-1)
    xc = wide - masked_mean(wide, pm, dim=1).unsqueeze(1)
    xc = zero_padded(xc, mask)
    s2 = masked_mean((xc * xc).sum(-1), mask, dim=1)  # (B,)
    pos = s2 > 0
    s = torch.where(pos, torch.sqrt(torch.where(pos, s2, 1)), 1)
    return (xc / s.view(-1, 1, 1)).to(x.dtype), s.to(x.dtype)
