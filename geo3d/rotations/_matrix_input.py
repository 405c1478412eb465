"""How functions that read a rotation matrix treat their input (private).

Policy (documented in :mod:`geo3d.rotations`): with value checks on, non-finite input or
``det <= 0`` raises ``ValueError``; any ``det > 0`` matrix is read as its nearest rotation
(:func:`project_to_so3`, like scipy >= 1.15 ``Rotation.from_matrix``). With value checks
off or while tracing (``torch.compile``, ``torch.func``) no data-dependent branch runs
and the input is assumed to be a rotation.

Cost tiers, by ``err = max|RᵀR - I|`` (skipping must change a result by no more than
rounding: reading a matrix off by ``err`` as if it were a rotation moves the result by
O(err), so the skip tolerance is ``64 eps(dtype)``):

* ``err <= 64 eps(dtype)`` (7.6e-6 float32, 1.4e-14 float64): read as is.
* float64 only, ``err <= 7.6e-6`` (e.g. a float32 rotation cast to float64): two
  Newton-Schulz polar steps ``X <- X (3I - XᵀX) / 2`` (elementwise, no SVD); each
  squares the error (7.6e-6 -> ~1e-10 -> ~1e-20), so the result is the nearest
  rotation to rounding.
* otherwise: :func:`project_to_so3` (SVD).

Derivatives: float32 within its tolerance reads the plain formula and so is its
derivative; everywhere else the derivative is that of ``f(polar(M))``. A Newton-Schulz
step has the same first derivative as the polar factor at a rotation (``X skew(XᵀdX)``),
so in float64 a tracked derivative always runs the two steps (no skip): then autograd
agrees with finite differences of step 1e-6 on either side of every edge, and the
reading is continuous across the 7.6e-6 edge to ~1e-20.
"""

from __future__ import annotations

import math

import torch

from geo3d.rotations._checks import tracing, values_enabled

#: singularity margin, in units of the dtype's eps
_DET_EPS = 64.0
#: orthonormality tolerance max|RᵀR - I| below which no correction runs, in units of
#: the dtype's eps: 64 eps (7.6e-6 float32, 1.4e-14 float64), so skipping changes a
#: result by no more than rounding.
_ORTHO_ULPS = 64.0
#: float64 band (64 float32 ulps) corrected by Newton-Schulz steps instead of an SVD
_NS_BAND = 64.0 * torch.finfo(torch.float32).eps


def _ortho_tol(dtype: torch.dtype) -> float:
    return _ORTHO_ULPS * torch.finfo(dtype).eps


def _newton_schulz(M: torch.Tensor, steps: int = 2) -> torch.Tensor:
    """``steps`` polar Newton-Schulz steps ``M <- M (3I - MᵀM) / 2`` on (N, 3, 3)
    (differentiable). Elementwise on the 9 entries as contiguous rows: a batched 3×3
    matmul costs ~5× more on CPU (measured 68 ms vs ~13 ms for 1e5 float64 matrices)."""
    m = M.reshape(-1, 9).T.contiguous().unbind(0)
    for _ in range(steps):
        # C = MᵀM (symmetric): c_ij = Σ_k m_ki m_kj
        c = {}
        for i in range(3):
            for j in range(i, 3):
                c[i, j] = c[j, i] = m[i] * m[j] + m[3 + i] * m[3 + j] + m[6 + i] * m[6 + j]
        # Y = 1.5 M - 0.5 M C: y_rj = 1.5 m_rj - 0.5 Σ_k m_rk c_kj
        m = tuple(
            1.5 * m[3 * r + j]
            - 0.5 * (m[3 * r] * c[0, j] + m[3 * r + 1] * c[1, j] + m[3 * r + 2] * c[2, j])
            for r in range(3)
            for j in range(3)
        )
    return torch.stack(m, dim=-1).reshape(M.shape)


def _tracks_derivative(R: torch.Tensor) -> bool:
    """Whether a derivative of ``R`` may be taken (reverse or forward mode, torch.func):
    then formulas with safe (non-NaN) derivatives at their singular points are used."""
    if tracing():
        return True  # torch.func / compile: take the safe formula
    if torch.is_grad_enabled() and R.requires_grad:
        return True
    return torch.autograd.forward_ad.unpack_dual(R).tangent is not None


def _orthonormality_and_det(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _rows_orthonormality_and_det(R.detach().reshape(-1, 9).T.contiguous())


def _rows_orthonormality_and_det(X: torch.Tensor):
    """Per matrix (flattened batch): max|RᵀR - I|, det R and s = |R|_F²/3.

    Elementwise on the 9 entries laid out as 9 contiguous rows (one copy), with fused
    multiply-adds: several times cheaper than a batched 3×3 matmul + det on CPU. NaN
    propagates into every output."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = X.detach()

    def dot(a0, a1, a2, b0, b1, b2):
        return torch.addcmul(torch.addcmul(a0 * b0, a1, b1), a2, b2)

    c00 = dot(m00, m10, m20, m00, m10, m20)
    c11 = dot(m01, m11, m21, m01, m11, m21)
    c22 = dot(m02, m12, m22, m02, m12, m22)
    c01 = dot(m00, m10, m20, m01, m11, m21)
    c02 = dot(m00, m10, m20, m02, m12, m22)
    c12 = dot(m01, m11, m21, m02, m12, m22)
    k0 = torch.addcmul(m11 * m22, m12, m21, value=-1.0)
    k1 = torch.addcmul(m12 * m20, m10, m22, value=-1.0)
    k2 = torch.addcmul(m10 * m21, m11, m20, value=-1.0)
    det = dot(m00, m01, m02, k0, k1, k2)
    err = torch.stack((c00 - 1.0, c11 - 1.0, c22 - 1.0, c01, c02, c12)).abs_().amax(0)
    return err, det, (c00 + c11 + c22) * (1.0 / 3.0)


def _check(name: str, R: torch.Tensor, X: torch.Tensor, what: str):
    """Value checks of the policy on the rows ``X`` (9, N) of ``R``; returns the flat
    indices of the matrices to project (None if none)."""
    err, det, scale = _rows_orthonormality_and_det(X)
    eps = torch.finfo(R.dtype).eps
    # a det within rounding of 0 counts as singular: |det| <= Π σ_i <= s^{3/2}, so
    # require det > k ε s^{3/2}
    margin = torch.addcmul(det, scale, scale.sqrt(), value=-_DET_EPS * eps)
    e_max, m_min = torch.stack((err.amax(), margin.amin())).tolist()
    if not (math.isfinite(e_max) and math.isfinite(m_min)):
        if not bool(torch.isfinite(R.detach()).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if not m_min > 0:
        n_bad = int((~(margin > 0)).sum())
        raise ValueError(
            f"{name}: expected {what} (finite, det > 0), got {n_bad} matrix/matrices with "
            "det <= 0 (a reflection, or a singular or zero matrix)"
        )
    tol = _ortho_tol(R.dtype)
    if R.dtype == torch.float64:
        if not (e_max <= tol and not _tracks_derivative(R)):
            return err
        return None
    if not e_max <= tol:
        return err
    return None


def _project_some(R: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """``R`` with every matrix whose orthonormality error ``err`` exceeds the skip
    tolerance replaced by its nearest rotation (Newton-Schulz in the float64 band,
    SVD beyond it)."""
    from geo3d.rotations._procrustes import project_to_so3

    flat = R.reshape(-1, 3, 3)
    far = err > _NS_BAND
    if R.dtype == torch.float64:
        n_far = int(far.sum())
        if n_far == 0:
            ns = _newton_schulz(flat)
        elif n_far == far.numel():
            ns = flat
        else:
            # safe where: far matrices go through the steps as the identity
            near = ~far
            eye = torch.eye(3, dtype=R.dtype, device=R.device)
            ns = torch.where(near[:, None, None], _newton_schulz(
                torch.where(near[:, None, None], flat, eye)), flat)
    else:
        ns = flat
        far = err > _ortho_tol(R.dtype)
    idx = far.nonzero().squeeze(1)
    if idx.numel():
        ns = ns.index_put((idx,), project_to_so3(flat[idx]))
    return ns.reshape(R.shape)


def as_rotation(name: str, R: torch.Tensor, what: str = "rotation matrices") -> torch.Tensor:
    """``R`` (*, 3, 3) read as rotations under the package policy (see the module doc).

    Raises:
        ValueError: (value checks on) non-finite entries, or ``det <= 0`` (reflections,
            singular or zero matrices; ``det`` within rounding of 0 counts as 0).
    """
    if values_enabled() and R.numel() > 0:
        err = _check(name, R, R.detach().reshape(-1, 9).T.contiguous(), what)
        if err is not None:
            return _project_some(R, err)
    return R


def rotation_rows(name: str, R: torch.Tensor, what: str = "rotation matrices") -> torch.Tensor:
    """As :func:`as_rotation`, returned as the 9 entries in 9 contiguous rows, shape
    (9, N) for the flattened batch (differentiable): elementwise formulas on contiguous
    rows are several times faster than on the strided entries of (N, 3, 3), which pays
    for the check."""
    X = R.reshape(-1, 9).T.contiguous()
    if values_enabled() and R.numel() > 0:
        err = _check(name, R, X, what)
        if err is not None:
            X = _project_some(R, err).reshape(-1, 9).T.contiguous()
    return X
