"""Tensor-field-network encoder built on e3nn (SE(3)/O(3)-equivariant)."""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn

from ._graph import _knn_neighborhood, weighted_mean
from ._output import EncoderOutput, check_points_mask, masked_mean, zero_padded, zero_rows

__all__ = ["TFNEncoder", "e3nn_l1_to_xyz"]


def _l1_change_of_basis(dtype: torch.dtype | None = None, device=None) -> Tensor:
    # M with e3nn_l1(v) = M @ v for the l=1 (1o) spherical harmonics ('norm' normalisation);
    # computed from e3nn itself, so it is correct whatever e3nn's component order is.
    eye = torch.eye(3, dtype=torch.float64)
    return o3.spherical_harmonics(1, eye, normalize=False, normalization="norm").T.to(
        dtype=dtype or torch.get_default_dtype(), device=device)


def e3nn_l1_to_xyz(v: Tensor) -> Tensor:
    """Convert e3nn ``l = 1`` components to Cartesian xyz.

    e3nn fixes its own component order for ``l = 1`` (``y, z, x`` before e3nn 0.2.2, ``x, y,
    z`` since); this applies the inverse of the basis e3nn's spherical harmonics use, so the
    result rotates with ordinary rotation matrices: ``xyz(D(R) v) = R xyz(v)``.

    Args:
        v: e3nn l=1 features, shape :math:`(*, 3)`.

    Returns:
        xyz vectors, shape :math:`(*, 3)`.
    """
    if v.shape[-1] != 3:
        raise ValueError(f"v: expected shape (..., 3), got {tuple(v.shape)}")
    M = _l1_change_of_basis(v.dtype, v.device)
    return v @ M  # M orthogonal: xyz = M^T v, row-vector form v @ M


def _tp_path_exists(irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, ir_out: o3.Irrep) -> bool:
    return any(ir_out in ir1 * ir2 for _, ir1 in irreps_in1 for _, ir2 in irreps_in2)


class _Conv(nn.Module):
    """Point convolution: tensor product of neighbour features with edge spherical harmonics,
    weights from a radial MLP, mean over valid neighbours, plus a linear self-connection."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps,
                 num_basis: int, radial_hidden: int) -> None:
        super().__init__()
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out,
                                                 shared_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_hidden, self.tp.weight_numel],
                                        torch.nn.functional.silu)
        self.self_connection = o3.Linear(irreps_in, irreps_out)

    def forward(self, f: Tensor, idx: Tensor, weight: Tensor, sh: Tensor, emb: Tensor) -> Tensor:
        B, N, D = f.shape
        K = idx.shape[-1]
        fj = torch.gather(f, 1, idx.reshape(B, N * K, 1).expand(B, N * K, D)).view(B, N, K, D)
        msg = self.tp(fj, sh, self.radial(emb))  # (B, N, K, D_out)
        agg = weighted_mean(msg, weight.unsqueeze(-1), dim=2)  # 0 on masked slots
        return agg + self.self_connection(f)


class TFNEncoder(nn.Module):
    """Tensor-field-network style encoder (Thomas et al. 2018) on e3nn.

    Nodes start with one scalar ``1x0e``. Each layer convolves over the kNN graph of the
    points: spherical harmonics ``Y(x_j - x_i)`` up to ``lmax`` (e3nn parity, so reflections
    are handled), per-edge tensor-product weights from a radial MLP on
    ``soft_one_hot_linspace(|x_j - x_i|)``, then an ``e3nn.nn.Gate`` (scalars: SiLU/tanh,
    gates: sigmoid) shaped by ``irreps_hidden``. A last convolution maps to ``irreps_out``;
    node features are mean-pooled over valid points.

    Outputs: ``invariant`` = pooled ``0e`` channels ``(B, C0)``; ``equivariant`` = pooled
    ``1o`` channels as xyz vectors ``(B, C1, 3)`` (converted from e3nn's l=1 basis with
    :func:`e3nn_l1_to_xyz`), None when ``irreps_out`` has no ``1o``; ``point_features`` =
    per-point ``0e`` channels.

    Claims (tested, to e3nn float tolerances): O(3) — rotations and reflections (``1o``
    outputs flip under inversion like vectors, ``0e`` are invariant) — and translation
    invariance (only relative positions enter); permutation-equivariant; padded points
    change nothing.

    Args:
        irreps_hidden: hidden irreps, e.g. ``"16x0e + 8x1o + 8x1e"``; only irreps reachable
            from the layer input are kept.
        irreps_out: output irreps; its ``0e`` and ``1o`` parts become the outputs.
        num_layers: number of gated hidden layers.
        lmax: maximum degree of the edge spherical harmonics.
        k: neighbours per point (self-edges are dropped).
        max_radius: end of the radial basis (distances beyond it get the smooth tail).
        num_basis: number of radial basis functions.
        radial_hidden: radial MLP width.

    Shape:
        - points: :math:`(B, N, 3)`, mask: :math:`(B, N)` bool.
        - output: ``invariant (B, C0)``, ``equivariant (B, C1, 3)``,
          ``point_features (B, N, C0)``, ``point_equivariant (B, N, C1, 3)``.
    """

    def __init__(self, irreps_hidden: str | o3.Irreps = "16x0e + 16x0o + 8x1o + 8x1e",
                 irreps_out: str | o3.Irreps = "64x0e + 16x1o", num_layers: int = 2,
                 lmax: int = 2, k: int = 16, max_radius: float = 1.0, num_basis: int = 10,
                 radial_hidden: int = 32) -> None:
        super().__init__()
        if k < 2:
            raise ValueError(f"k: expected an integer >= 2 (self-edges are dropped), got {k}")
        if num_layers < 0:
            raise ValueError(f"num_layers: expected >= 0, got {num_layers}")
        if max_radius <= 0:
            raise ValueError(f"max_radius: expected > 0, got {max_radius}")
        irreps_hidden = o3.Irreps(irreps_hidden).simplify()
        self.irreps_out = o3.Irreps(irreps_out).simplify()
        n0 = sum(mul for mul, ir in self.irreps_out if ir == o3.Irrep("0e"))
        n1 = sum(mul for mul, ir in self.irreps_out if ir == o3.Irrep("1o"))
        if n0 == 0:
            raise ValueError(f"irreps_out: expected at least one 0e channel, got {self.irreps_out}")
        self.k = int(k)
        self.max_radius = float(max_radius)
        self.num_basis = int(num_basis)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        act_scalar = {1: torch.nn.functional.silu, -1: torch.tanh}
        irreps = o3.Irreps("0e")
        layers = []
        for _ in range(num_layers):
            scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden
                                 if ir.l == 0 and _tp_path_exists(irreps, self.irreps_sh, ir)])
            gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden
                               if ir.l > 0 and _tp_path_exists(irreps, self.irreps_sh, ir)])
            ir_gate = "0e" if _tp_path_exists(irreps, self.irreps_sh, o3.Irrep("0e")) else "0o"
            gates = o3.Irreps([(m, ir_gate) for m, _ in gated])
            gate = Gate(scalars, [act_scalar[ir.p] for _, ir in scalars],
                        gates, [torch.sigmoid if ir_gate == "0e" else torch.tanh] * len(gates),
                        gated)
            conv = _Conv(irreps, self.irreps_sh, gate.irreps_in, num_basis, radial_hidden)
            layers.append(nn.ModuleDict({"conv": conv, "gate": gate}))
            irreps = gate.irreps_out
        self.layers = nn.ModuleList(layers)
        self.conv_out = _Conv(irreps, self.irreps_sh, self.irreps_out, num_basis, radial_hidden)
        # Indices of the 0e and 1o components in irreps_out.
        idx0, idx1 = [], []
        for (_mul, ir), sl in zip(self.irreps_out, self.irreps_out.slices(), strict=True):
            if ir == o3.Irrep("0e"):
                idx0.extend(range(sl.start, sl.stop))
            elif ir == o3.Irrep("1o"):
                idx1.extend(range(sl.start, sl.stop))
        self.register_buffer("idx0", torch.tensor(idx0, dtype=torch.long), persistent=False)
        self.register_buffer("idx1", torch.tensor(idx1, dtype=torch.long), persistent=False)
        self.invariant_dim = n0
        self.equivariant_dim = n1
        self.point_dim = n0

    def forward(self, points: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``points (B, N, 3)`` with optional ``mask (B, N)`` (True = valid)."""
        mask = check_points_mask(points, mask)
        x = zero_padded(points, mask)
        B, N, _ = x.shape
        # k + 1 so that dropping the self edge leaves k neighbours; points tied at the k-th
        # distance share the last slots (see knn_neighborhood), so grids stay equivariant.
        idx, nbr_mask, weight = _knn_neighborhood(x, self.k + 1, mask)
        self_idx = torch.arange(N, device=x.device).view(1, N, 1)
        nbr_mask = nbr_mask & (idx != self_idx)
        weight = torch.where(nbr_mask, weight, torch.zeros((), dtype=x.dtype, device=x.device))
        K = idx.shape[-1]
        xj = torch.gather(x, 1, idx.reshape(B, N * K, 1).expand(B, N * K, 3)).view(B, N, K, 3)
        vec = xj - x.unsqueeze(2)  # (B, N, K, 3)
        # Keep self/masked edges away from |v| = 0 (their messages are masked out anyway).
        vec = torch.where(nbr_mask.unsqueeze(-1), vec, torch.ones_like(vec))
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True,
                                    normalization="component")
        dist = torch.linalg.vector_norm(vec, dim=-1)
        emb = soft_one_hot_linspace(dist, 0.0, self.max_radius, self.num_basis,
                                    basis="gaussian", cutoff=False) * self.num_basis ** 0.5
        f = torch.ones(B, N, 1, dtype=x.dtype, device=x.device)
        for layer in self.layers:
            f = layer["gate"](layer["conv"](f, idx, weight, sh, emb))
        f = self.conv_out(f, idx, weight, sh, emb)  # (B, N, dim irreps_out)
        pm = mask.unsqueeze(-1)
        f0 = f[..., self.idx0]  # (B, N, C0)
        f1 = e3nn_l1_to_xyz(f[..., self.idx1].reshape(B, N, len(self.idx1) // 3, 3))  # (B, N, C1, 3)
        inv = masked_mean(f0, pm, dim=1)
        eq = masked_mean(f1, pm.unsqueeze(-1), dim=1)
        if self.equivariant_dim == 0:  # no 1o channels requested
            return EncoderOutput(invariant=inv, point_features=zero_rows(f0, mask))
        return EncoderOutput(invariant=inv, equivariant=eq, point_features=zero_rows(f0, mask),
                             point_equivariant=zero_rows(f1, mask))
