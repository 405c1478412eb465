"""Float64-accurate Wigner-D matrices in e3nn's real basis.

e3nn's ``Irreps.D_from_matrix`` goes through Euler angles (``acos`` near the poles) and
float32 generators, which limits it to ~1e-7 even in float64. Here ``D^l(R)`` is instead
recovered from e3nn's own spherical harmonics, which satisfy ``Y^l(R x) = D^l(R) Y^l(x)``:
for fixed points ``X (m, 3)`` with ``A = Y^l(X)`` of full column rank,
``D^l(R)ᵀ = A⁺ Y^l(X Rᵀ)``. This is exact up to rounding (~1e-15 in float64) and matches
e3nn's basis and sign conventions by construction.
"""

from __future__ import annotations

import functools

import torch

from geo3d.groups._base import _det

__all__ = ["wigner_d", "irreps_d_from_matrix"]


@functools.lru_cache(maxsize=64)
def _probe(l: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed probe points ``(m, 3)`` and ``pinv(Y^l(points)) (2l+1, m)`` in float64.

    The points come from numpy's seeded generator, not torch's: a first call inside
    ``torch.vmap``/``jacfwd`` must not draw torch random numbers (vmap forbids it).
    """
    import numpy as np
    from e3nn import o3

    m = 2 * (2 * l + 1) + 4
    draw = np.random.default_rng(1234 + l).standard_normal((m, 3))
    pts = torch.tensor(draw, dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True)
    a = o3.spherical_harmonics(l, pts, normalize=False, normalization="component")
    return pts, torch.linalg.pinv(a)


def wigner_d(l: int, rot: torch.Tensor) -> torch.Tensor:
    """Wigner-D matrix of degree ``l`` for proper rotations.

    Args:
        l: degree ``>= 0``.
        rot: rotation matrices, shape :math:`(*, 3, 3)`.

    Returns:
        shape :math:`(*, 2l+1, 2l+1)`, in e3nn's real basis.
    """
    from e3nn import o3

    if l == 0:
        return torch.ones(*rot.shape[:-2], 1, 1, dtype=rot.dtype, device=rot.device)
    pts, pinv = _probe(l)
    pts = pts.to(device=rot.device, dtype=rot.dtype)
    pinv = pinv.to(device=rot.device, dtype=rot.dtype)
    moved = pts @ rot.transpose(-1, -2)  # (*, m, 3): rows R x_k
    b = o3.spherical_harmonics(l, moved, normalize=False, normalization="component")
    return (pinv @ b).transpose(-1, -2)


def irreps_d_from_matrix(irreps, g: torch.Tensor) -> torch.Tensor:
    """Block-diagonal representation matrix of e3nn ``irreps`` for ``g ∈ O(3)``.

    Like ``irreps.D_from_matrix(g)``: ``g = d R`` with ``d = sign(det g)``; irrep
    ``(l, p)`` maps to ``p^{(1-d)/2} D^l(R)``.

    Args:
        irreps: ``e3nn.o3.Irreps``.
        g: shape :math:`(*, 3, 3)`.

    Returns:
        shape :math:`(*, dim, dim)`.
    """
    d = torch.where(_det(g) < 0, -1.0, 1.0).to(g.dtype)
    rot = d[..., None, None] * g
    cache: dict[int, torch.Tensor] = {}
    blocks = []
    for mul, ir in irreps:
        if ir.l not in cache:
            cache[ir.l] = wigner_d(ir.l, rot)
        par = torch.where(d < 0, float(ir.p), 1.0).to(g.dtype)[..., None, None]
        blocks += [par * cache[ir.l]] * mul
    # out-of-place block diagonal (each block padded to full width), so torch.vmap works
    rows, i = [], 0
    for b in blocks:
        n = b.shape[-1]
        rows.append(torch.nn.functional.pad(b, (i, irreps.dim - i - n)))
        i += n
    return torch.cat(rows, dim=-2)
