"""Projection onto SO(3), rotation averaging, Kabsch and Umeyama alignment."""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from geo3d.rotations._checks import check_finite, check_pair, check_tensor, values_enabled
from geo3d.rotations._matrix_input import as_rotation

__all__ = ["project_to_so3", "geodesic_distance", "mean_rotation", "kabsch", "umeyama"]


def _special_svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, signed singular values s̃ and V' with M = U diag(s̃) V'ᵀ and det(U V'ᵀ) = +1."""
    U, S, Vh = torch.linalg.svd(M)
    V = Vh.transpose(-1, -2)
    d = torch.det(U) * torch.det(V)
    d = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    ones = torch.ones_like(d)
    D = torch.stack((ones, ones, d), dim=-1)
    return U, S * D, V * D.unsqueeze(-2)


def _damped_inverse(den: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``1/den`` where ``den >= e``, ``den/e²`` below (0 at 0, continuous at ``e``), with
    ``e = ε^(1/3) σ₁`` (ε the dtype's epsilon): bounded by ``1/e``. ``den`` is a sum of two
    singular values, which vanishes only where the projection is not unique (rank ≤ 1, or
    det < 0 with σ₂ = σ₃); there a rounding-level ``den`` (~ε σ₁) contributes ~ε^(1/3)
    (relative) instead of ``1/ε``. The factor keeps the sign of ``1/den``, so the result
    is still a descent direction. (roma damps the same way, ``x/(x² + eps²)``, with an
    absolute ``eps``.)"""
    e = (torch.finfo(s.dtype).eps ** (1.0 / 3.0)) * s[..., :1].abs().unsqueeze(-1)
    e = e.clamp_min(torch.finfo(s.dtype).tiny ** 0.25)
    big = den >= e
    return torch.where(big, 1.0 / torch.where(big, den, torch.ones_like(den)), den / (e * e))


def _polar_differential(U, s, V, A_from: torch.Tensor) -> torch.Tensor:
    """``U [(A - Aᵀ) ⊙ inv(s̃_i + s̃_j)] Vᵀ`` with ``A = Uᵀ A_from V`` (damped inverse)."""
    A = U.transpose(-1, -2) @ A_from @ V
    inv = _damped_inverse(s.unsqueeze(-1) + s.unsqueeze(-2), s)
    return U @ ((A - A.transpose(-1, -2)) * inv) @ V.transpose(-1, -2)


class _ProjectSO3(torch.autograd.Function):
    """Special polar factor with the closed-form derivative (forward and reverse mode).

    For M = U diag(s̃) Vᵀ and R = U Vᵀ, dR = U X Vᵀ with
    X_ij = (A_ij - A_ji)/(s̃_i + s̃_j), A = Uᵀ dM V (the jvp). Hence for G = dL/dR:
    dL/dM = U [(B - Bᵀ) / (s̃_i + s̃_j)] Vᵀ with B = Uᵀ G V (the vjp; the operator is
    self-adjoint up to the swap of U and V). The denominators stay positive for repeated
    singular values (unlike torch.linalg.svd's backward, which divides by σ_i² - σ_j²);
    they vanish only where the projection itself is not unique, where
    :func:`_damped_inverse` keeps the derivative bounded (as roma's ``gradient_eps``).
    ``setup_context`` style with ``generate_vmap_rule``: works under ``torch.func``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(M: torch.Tensor):  # type: ignore[override]
        U, s, V = _special_svd(M)
        return U @ V.transpose(-1, -2), U, s, V

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        _, U, s, V = output
        ctx.mark_non_differentiable(U, s, V)
        ctx.save_for_backward(U, s, V)
        ctx.save_for_forward(U, s, V)

    @staticmethod
    @once_differentiable
    def backward(ctx, G, gU, gs, gV):  # type: ignore[override]
        U, s, V = ctx.saved_tensors
        # vjp: the adjoint of dM -> U X(Uᵀ dM V) Vᵀ is G -> U X(Uᵀ G V) Vᵀ as well
        return _polar_differential(U, s, V, G)

    @staticmethod
    def jvp(ctx, dM):  # type: ignore[override]
        U, s, V = ctx.saved_tensors
        return _polar_differential(U, s, V, dM), None, None, None


def project_to_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (Frobenius norm) to a 3×3 matrix: the special orthogonal Procrustes.

    ``R = U diag(1, 1, det(U Vᵀ)) Vᵀ`` from the SVD ``M = U Σ Vᵀ``. The derivative
    (reverse and forward mode, ``torch.func`` included) is the closed-form polar-factor
    derivative (denominators ``σ_i + σ_j``), so it is exact at repeated singular values
    (e.g. ``M`` = a rotation, or the identity). Where the projection is not unique
    (rank <= 1, e.g. singular values (1, 0, 0)), one nearest rotation is returned and the
    denominators below ``ε^(1/3) σ₁`` are damped (like roma's ``gradient_eps``): the
    gradient stays bounded (``<= |dL/dR| / (ε^(1/3) σ₁)``) and a descent direction.
    float16/bfloat16 input (no SVD kernel for them) is computed in float32 and the
    result cast back (as are :func:`kabsch`, :func:`umeyama`, :func:`mean_rotation` and
    the matrix readers, which project through this function).

    Args:
        M: matrices, shape :math:`(*, 3, 3)`, finite.

    Returns:
        Rotation matrices, shape :math:`(*, 3, 3)`.

    Raises:
        ValueError: wrong shape; (value checks on) non-finite ``M``.

    Reference:
        N. J. Higham, "Computing the polar decomposition — with applications", SIAM J.
        Sci. Stat. Comput. 7(4), 1986, DOI 10.1137/0907079; roma
        ``roma/mappings.py::_ProcrustesManualDerivatives`` (damped derivative).

    Example:
        >>> project_to_so3(2.0 * torch.eye(3))
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    check_tensor("M", M, (3, 3))
    check_finite("M", M)
    if M.numel() == 0:
        return M.clone()
    if M.dtype in _LOW_PRECISION:
        return _ProjectSO3.apply(M.float())[0].to(M.dtype)
    return _ProjectSO3.apply(M)[0]


#: dtypes without a CPU SVD kernel: projected in float32
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Rotation angle of ``R1ᵀ R2`` (the geodesic distance on SO(3)).

    Two formulas. The exact one, ``θ = atan2(sin θ, cos θ)`` from the skew part and the
    trace of ``R1ᵀ R2``, is accurate to ~machine precision everywhere, including near 0
    and π. It serves batches under 8192 rotations, code being traced (``torch.compile``,
    ``torch.func``) and calls with value checks off. Larger batches use roma's cheaper
    ``2 asin(|R2 - R1|_F / 2√2)`` (about roma's speed) and redo with the exact formula the
    rotations within ~1.1° of π, where the asin loses digits; both agree to a few hundred
    ε elsewhere. Inputs are taken as rotations (no projection: ``R1ᵀ R2`` is not formed).

    Gradients are finite everywhere. At ``θ = 0`` (a cone point, no derivative) the
    gradient is 0. At ``θ = π`` (within rounding) it is a one-sided derivative: 0 for
    perturbations about axes orthogonal to the rotation axis ``n`` and ±1 (the limit from
    one side, like :func:`quat_distance`) for a perturbation about ``n``.

    Args:
        R1: rotation matrices, shape :math:`(*, 3, 3)`.
        R2: rotation matrices, shape :math:`(*, 3, 3)`, broadcastable with ``R1``.

    Returns:
        Angles in radians in ``[0, π]``, shape :math:`(*)` (the broadcast batch shape).

    Raises:
        ValueError: wrong shapes or batch dims that do not broadcast; (value checks on)
            NaN or inf entries.

    Reference:
        R. Hartley, J. Trumpf, Y. Dai, H. Li, "Rotation averaging", IJCV 103, 2013,
        DOI 10.1007/s11263-012-0601-0 (chordal and angular distances); roma
        ``roma/utils.py::rotmat_geodesic_distance`` (the asin formula).

    Example:
        >>> R = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
        >>> geodesic_distance(torch.eye(3), R)
        tensor(3.1416)
    """
    check_tensor("R1", R1, (3, 3))
    check_tensor("R2", R2, (3, 3))
    check_pair("R1", R1, 2, "R2", R2, 2)
    if not values_enabled() or R1.numel() + R2.numel() < _FAST_MIN_NUMEL:
        # traced/compiled or checks off: no host read; small batches: fewer kernels
        return _geodesic_precise(R1, R2)
    # h = sin(θ/2) = |R2 - R1|_F / 2√2 (vector_norm's gradient at 0 is 0, not NaN). An
    # error δ ~ a few ε in h becomes δ / (√2 cos(θ/2)) in θ: tiny except near π, so rows
    # with cos(θ/2) < _COS_HALF_MIN (~1.3% of uniformly random ones) are redone exactly.
    # The one host read that finds them is also the finiteness check (aminmax
    # propagates NaN).
    D = R2 - R1
    grad = torch.is_grad_enabled() and (R1.requires_grad or R2.requires_grad)
    if grad:
        h = torch.linalg.vector_norm(D, dim=(-2, -1)) * _INV_2SQRT2
    else:  # the same h, ~25% faster: a matrix-vector product sums the 9 squares, in place
        w = D.new_full((9,), 0.125)
        h = torch.mv(D.reshape(-1, 9).square_(), w).sqrt_().view(D.shape[:-2])
    lo, hi = torch.aminmax(h.detach())
    lo, hi = lo.item(), hi.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("R1, R2: expected finite values, got NaN or inf")
    if hi <= _SIN_HALF_MAX:
        return torch.asin(h) * 2.0 if grad else torch.asin_(h).mul_(2.0)
    theta = torch.asin(h.clamp_max(_SIN_HALF_MAX)) * 2.0
    idx = (h.detach().reshape(-1) > _SIN_HALF_MAX).nonzero().squeeze(1)
    near_pi = _geodesic_precise(_rows(R1, D.shape, idx), _rows(R2, D.shape, idx))
    return theta.reshape(-1).index_put((idx,), near_pi).view(theta.shape)


def _rows(R: torch.Tensor, shape: torch.Size, flat_idx: torch.Tensor) -> torch.Tensor:
    """``R`` broadcast to ``shape`` (*, 3, 3), flattened to (-1, 3, 3), rows ``flat_idx``."""
    if R.shape == shape and R.is_contiguous():
        return R.view(-1, 3, 3).index_select(0, flat_idx)
    return R.expand(shape).reshape(-1, 3, 3)[flat_idx]  # broadcast input: rare, may copy


_FAST_MIN_NUMEL = 2 * 9 * 8192
_INV_2SQRT2 = 1.0 / (2.0 * math.sqrt(2.0))
_COS_HALF_MIN = 0.01
#: sin(θ/2) above which the asin formula is replaced (where cos(θ/2) = _COS_HALF_MIN)
_SIN_HALF_MAX = math.sqrt(1.0 - _COS_HALF_MIN**2)
#: |vee(Mᵀ - M)| = 2 sin θ below this many ε: θ is 0 or π within rounding
_FLAT_EPS = 32.0


def _geodesic_precise(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    # θ = atan2(sin θ, cos θ) for M = R1ᵀ R2: the skew part of M is sin θ [n]×, so
    # |vee(Mᵀ - M)| = 2 sin θ, and tr M - 1 = 2 cos θ. Both carry absolute error ~ε, so θ
    # is accurate to ~ε everywhere, including near 0 and π (unlike acos/asin of the trace
    # or of |R1 - R2|). M is not formed (a batched 3×3 matmul is slow): with rows r_k of
    # R1 and s_k of R2, tr M = Σ R1 ⊙ R2 and vee(Mᵀ - M) = v = Σ_k r_k × s_k.
    if R1.shape != R2.shape:
        R1, R2 = torch.broadcast_tensors(R1, R2)  # views; linalg.cross needs equal ndim
    c = (R1 * R2).sum((-1, -2)) - 1.0
    v = torch.linalg.cross(R1, R2, dim=-1).sum(-2)
    s = torch.linalg.vector_norm(v, dim=-1)  # gradient 0 (not NaN) at v = 0
    tol = _FLAT_EPS * torch.finfo(s.dtype).eps
    flat_rows = True  # traced or checks off: the branch-free formula
    if values_enabled():
        flat_rows = False
        if s.numel() > 0:  # one host read: finiteness (NaN/inf propagate) and flat rows
            lo, tot = torch.stack((s.detach().amin(), c.detach().sum())).tolist()
            if not (math.isfinite(lo) and math.isfinite(tot)):
                raise ValueError("R1, R2: expected finite values, got NaN or inf")
            flat_rows = lo <= tol
    if flat_rows:
        s = _flat_sin(R1, R2, c, v, s, tol)
    return torch.atan2(s, c)


def _flat_sin(R1, R2, c, v, s, tol: float) -> torch.Tensor:
    """``s = |v|`` with a useful derivative where ``v = 0`` within rounding (θ = 0 or π),
    where |v|'s gradient is 0 or the direction of rounding noise. At θ = 0 (a cone point)
    s is 0 with gradient 0. At θ = π, s is read as |t|, t = v·a (the same value within
    rounding), with a = ±n the rotation axis and |t| = t sign(t), sign(±0) = ±1: a
    one-sided derivative. a: R1 + R2 = R1 (I + M) = 2 (R1 n) nᵀ at π, so its largest row
    is parallel to n."""
    P = R1 + R2
    p0, p1, p2 = P.unbind(-2)
    n0, n1, n2 = (p0 * p0).sum(-1), (p1 * p1).sum(-1), (p2 * p2).sum(-1)
    pick0 = (n0 >= n1) & (n0 >= n2)
    pick1 = n1 >= n2
    a = torch.where(pick0[..., None], p0, torch.where(pick1[..., None], p1, p2))
    na = torch.where(pick0, n0, torch.where(pick1, n1, n2))  # >= 4/3 for rotations
    t = (v * a).sum(-1) * torch.rsqrt(na)
    s_flat = torch.where(c < 0, t * torch.copysign(torch.ones_like(t), t), 0.0)
    return torch.where(s <= tol, s_flat, s)


def _check_weights(weights: torch.Tensor, shape: torch.Size, what: str, device) -> None:
    """Shape/device/value checks of ``weights`` (any floating dtype: they are cast to the
    dtype of the points/rotations)."""
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        got = weights.dtype if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected a floating-point tensor of shape {what}, got {got}")
    if weights.device != device:
        raise ValueError(f"weights: expected a tensor on device {device}, got {weights.device}")
    try:
        ok = torch.broadcast_shapes(weights.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:  # must broadcast TO shape: extra or mismatched dims would change the result
        raise ValueError(
            f"weights: expected shape broadcastable to {tuple(shape)} {what}, "
            f"got {tuple(weights.shape)}"
        )
    if values_enabled() and weights.numel() > 0:
        check_finite("weights", weights)
        if bool((weights < 0).any()):
            raise ValueError("weights: expected non-negative weights, got negative values")


def mean_rotation(
    R: torch.Tensor, weights: torch.Tensor | None = None, dim: int = -3
) -> torch.Tensor:
    """Chordal L2 mean: ``argmin_M Σ w_i |M - R_i|_F²`` over SO(3).

    Equal to projecting the weighted arithmetic mean of the matrices onto SO(3) (the same
    minimiser as scipy's ``Rotation.mean``). Where the mean matrix has rank <= 1 (e.g. two
    rotations π apart) the minimiser is not unique: one of them is returned and the
    gradient stays bounded (see :func:`project_to_so3`). Input matrices follow the policy
    of :mod:`geo3d.rotations` (nearest rotation for ``det > 0``).

    Args:
        R: rotation matrices, shape :math:`(*, N, *, 3, 3)`; averaged over ``dim``.
        weights: optional non-negative weights, shape broadcastable to ``R.shape[:-2]``
            (broadcasting may not add dims), positive total along ``dim``.
        dim: the batch dimension of ``R`` to average over (must not be one of the last two).

    Returns:
        Mean rotations, shape ``R.shape`` without ``dim`` (an empty batch gives an empty
        result).

    Raises:
        ValueError: bad shapes or ``dim``; ``R.shape[dim] == 0``; (value checks on)
            non-finite input, ``det(R_i) <= 0``, negative weights or a zero total weight.

    Example:
        >>> R = torch.stack((torch.eye(3), torch.eye(3)))
        >>> mean_rotation(R)
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    check_tensor("R", R, (None, 3, 3))
    if not isinstance(dim, int) or not (-R.ndim <= dim < R.ndim):
        raise ValueError(f"dim: expected an int in [{-R.ndim}, {R.ndim - 3}], got {dim!r}")
    d = dim % R.ndim
    if d >= R.ndim - 2:
        raise ValueError(
            f"dim: expected a batch dimension of R (not one of its last two), got {dim}"
        )
    if R.shape[d] == 0:
        raise ValueError(
            f"R: expected at least one rotation along dim={dim}, got shape {tuple(R.shape)}"
        )
    R = as_rotation("R", R)
    if weights is None:
        M = R.mean(dim=d)
    else:
        _check_weights(weights, R.shape[:-2], "(R.shape[:-2])", R.device)
        weights = weights.to(R.dtype)  # like kabsch/umeyama
        w = weights.unsqueeze(-1).unsqueeze(-1)
        if values_enabled():
            tot = torch.broadcast_to(weights, R.shape[:-2]).sum(dim=d)
            if tot.numel() > 0 and not tot.min().item() > 0:
                raise ValueError(f"weights: expected a positive total weight along dim={dim}")
        M = (R * w).sum(dim=d)
    return project_to_so3(M)


def _prep(P: torch.Tensor, Q: torch.Tensor, weights: torch.Tensor | None):
    check_tensor("P", P, (None, 3), min_ndim=2)
    check_tensor("Q", Q, (None, 3), min_ndim=2)
    if P.shape[-2] != Q.shape[-2]:
        raise ValueError(
            f"Q: expected the same number of points as P ({P.shape[-2]}), got shape "
            f"{tuple(Q.shape)} (P has shape {tuple(P.shape)})"
        )
    batch = check_pair("P", P, 2, "Q", Q, 2)
    check_finite("P", P)
    check_finite("Q", Q)
    n = P.shape[-2]
    if weights is None:
        w = torch.full((*batch, n), 1.0 / max(n, 1), dtype=P.dtype, device=P.device)
    else:
        _check_weights(weights, torch.Size((*batch, n)), "(..., N)", P.device)
        w = weights.to(P.dtype).expand(*batch, n)
        tot = w.sum(-1, keepdim=True)
        if values_enabled() and bool((tot <= 0).any()):
            raise ValueError("weights: expected a positive total weight per batch element")
        w = w / tot
    wv = w.unsqueeze(-1)
    pm = (wv * P).sum(-2)
    qm = (wv * Q).sum(-2)
    Pc = P - pm.unsqueeze(-2)
    Qc = Q - qm.unsqueeze(-2)
    H = (wv * Qc).transpose(-1, -2) @ Pc  # Σ w q̃ p̃ᵀ  (3, 3)
    return w, pm, qm, Pc, H


def _project_or_identity(H: torch.Tensor, P, Q, w) -> torch.Tensor:
    """project_to_so3(H), and the identity where H carries no information: H = 0 up to
    the rounding of the centring (N = 0, or all points of P or of Q coincident). The
    documented value instead of the SVD's arbitrary pick, and no 1/(rounding noise)
    gradient."""
    R = project_to_so3(H)
    with torch.no_grad():
        wv = w.unsqueeze(-1)
        scale = torch.sqrt((wv * P * P).sum((-1, -2)) * (wv * Q * Q).sum((-1, -2)))
        tol = 64.0 * torch.finfo(H.dtype).eps * scale
        zero = (torch.linalg.vector_norm(H, dim=(-2, -1)) <= tol)[..., None, None]
    return torch.where(zero, torch.eye(3, dtype=H.dtype, device=H.device), R)


def kabsch(
    P: torch.Tensor, Q: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid alignment ``argmin_{R,t} Σ w_i |R p_i + t - q_i|²`` with ``R ∈ SO(3)``.

    The determinant fix (never a reflection) is part of :func:`project_to_so3`, whose
    backward pass is stable, so the result is differentiable. Degenerate configurations
    (collinear points: a rotation about the line is free) return one optimal rotation with
    bounded gradients; with no information (``N = 0``, or all points of ``P`` or ``Q``
    coincident) ``R`` is the identity.

    Args:
        P: source points, shape :math:`(*, N, 3)`.
        Q: target points, shape :math:`(*, N, 3)`.
        weights: optional non-negative weights, shape :math:`(*, N)` (broadcasting may not
            add dims), positive sum.

    Returns:
        ``(R, t)`` with ``Q ≈ P Rᵀ + t``: shapes :math:`(*, 3, 3)` and :math:`(*, 3)`.

    Raises:
        ValueError: bad shapes or weights; (value checks on) non-finite points or weights,
            negative weights or a zero total weight.

    Reference:
        W. Kabsch, "A solution for the best rotation to relate two sets of vectors",
        Acta Cryst. A32, 1976, DOI 10.1107/S0567739476001873.

    Example:
        >>> P = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> R, t = kabsch(P, P + 1.0)
        >>> t
        tensor([1., 1., 1.])
    """
    w, pm, qm, _, H = _prep(P, Q, weights)
    R = _project_or_identity(H, P, Q, w)
    t = qm - (R @ pm.unsqueeze(-1)).squeeze(-1)
    return R, t


def umeyama(
    P: torch.Tensor, Q: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarity alignment ``argmin_{s,R,t} Σ w_i |s R p_i + t - q_i|²`` (Umeyama 1991).

    Degenerate configurations behave as in :func:`kabsch` (``Q`` all coincident gives
    ``s = 0`` and ``R = I``).

    Args:
        P: source points, shape :math:`(*, N, 3)`, not all equal.
        Q: target points, shape :math:`(*, N, 3)`.
        weights: optional non-negative weights, shape :math:`(*, N)` (broadcasting may not
            add dims), positive sum.

    Returns:
        ``(s, R, t)`` with ``Q ≈ s P Rᵀ + t``: shapes :math:`(*)`, :math:`(*, 3, 3)`,
        :math:`(*, 3)`.

    Raises:
        ValueError: as :func:`kabsch`; (value checks on) ``P`` with zero variance (all
            points equal, or ``N = 0``).

    Reference:
        S. Umeyama, "Least-squares estimation of transformation parameters between two
        point patterns", IEEE TPAMI 13(4), 1991, DOI 10.1109/34.88573.

    Example:
        >>> P = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> s, R, t = umeyama(P, 2.0 * P)
        >>> round(float(s), 6)
        2.0
    """
    w, pm, qm, Pc, H = _prep(P, Q, weights)
    R = _project_or_identity(H, P, Q, w)
    var_p = (w * (Pc * Pc).sum(-1)).sum(-1)
    if values_enabled() and var_p.numel() > 0 and bool((var_p <= 0).any()):
        raise ValueError("P: expected points that are not all identical (zero variance)")
    s = (R * H).sum((-1, -2)) / var_p
    t = qm - s.unsqueeze(-1) * (R @ pm.unsqueeze(-1)).squeeze(-1)
    return s, R, t
