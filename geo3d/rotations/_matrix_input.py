"""How functions that read a rotation matrix treat their input (private).

Policy (documented in :mod:`geo3d.rotations`): with value checks on, non-finite input or
``det <= 0`` raises ``ValueError``; any ``det > 0`` matrix is read as its nearest rotation
(:func:`project_to_so3`, like scipy >= 1.15 ``Rotation.from_matrix``); matrices that are
already orthonormal to a dtype-scaled tolerance skip the projection. With value checks
off or while tracing (``torch.compile``, ``torch.func``) no data-dependent branch runs
and the input is assumed to be a rotation.

The derivative is always that of ``M -> f(project_to_so3(M))``: on the no-projection path
the matrix goes through ``R.detach() + (N(R) - N(R).detach())`` with one Newton–Schulz step
``N(R) = 1.5 R - 0.5 R RᵀR``, whose value is ``R`` exactly and whose derivative at a
rotation equals that of the polar projection, ``dR ↦ (dR - R dRᵀ R)/2``. So gradients
do not depend on whether a projection ran, and finite differences (which leave SO(3))
agree with autograd.
"""

from __future__ import annotations

import math

import torch

from geo3d.rotations._checks import tracing, values_enabled

#: orthonormality tolerance max|RᵀR - I| and singularity margin, in units of the dtype's eps
_ORTHO_EPS = 64.0
_DET_EPS = 64.0


def _tracks_derivative(R: torch.Tensor) -> bool:
    if tracing():
        return True  # torch.func / compile: a cheap, branch-free formula either way
    if torch.is_grad_enabled() and R.requires_grad:
        return True
    return torch.autograd.forward_ad.unpack_dual(R).tangent is not None


def _newton_schulz_tangent(R: torch.Tensor) -> torch.Tensor:
    N = 1.5 * R - 0.5 * (R @ (R.transpose(-1, -2) @ R))
    return R.detach() + (N - N.detach())


def _det3(m: torch.Tensor) -> torch.Tensor:
    r0, r1, r2 = m.unbind(-2)
    return (r0 * torch.linalg.cross(r1, r2, dim=-1)).sum(-1)


def as_rotation(name: str, R: torch.Tensor, what: str = "rotation matrices") -> torch.Tensor:
    """``R`` (*, 3, 3) read as rotations under the package policy (see the module doc).

    Raises:
        ValueError: (value checks on) non-finite entries, or ``det <= 0`` (reflections,
            singular or zero matrices; ``det`` within rounding of 0 counts as 0).
    """
    bad_idx = None
    if values_enabled() and R.numel() > 0:
        Rd = R.detach()
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        C = Rd.transpose(-1, -2) @ Rd
        err = (C - eye).abs().amax((-2, -1))
        det = _det3(Rd)
        eps = torch.finfo(R.dtype).eps
        # |det| <= Π σ_i <= (|R|_F²/3)^{3/2}: a det within rounding of 0 counts as singular
        scale = (C.diagonal(dim1=-2, dim2=-1).sum(-1) / 3.0) ** 1.5
        margin = det - _DET_EPS * eps * scale
        e_max, neg_margin = torch.stack((err.amax(), -margin.amin())).tolist()
        if not (math.isfinite(e_max) and math.isfinite(neg_margin)):
            if not bool(torch.isfinite(Rd).all()):
                raise ValueError(f"{name}: expected finite values, got NaN or inf")
        if not neg_margin < 0:
            n_bad = int((~(margin > 0)).sum())
            raise ValueError(
                f"{name}: expected {what} (finite, det > 0), got {n_bad} matrix/matrices with "
                "det <= 0 (a reflection, or a singular or zero matrix)"
            )
        if not e_max <= _ORTHO_EPS * eps:
            bad_idx = (~(err <= _ORTHO_EPS * eps)).reshape(-1).nonzero().squeeze(1)
    out = _newton_schulz_tangent(R) if _tracks_derivative(R) else R
    if bad_idx is not None:
        from geo3d.rotations._procrustes import project_to_so3

        flat = R.reshape(-1, 3, 3)
        out = out.reshape(-1, 3, 3).index_put((bad_idx,), project_to_so3(flat[bad_idx]))
        out = out.view(R.shape)
    return out
