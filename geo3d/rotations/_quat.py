"""Quaternions (scalar-first ``wxyz``) and rotation matrices."""

from __future__ import annotations

import math

import torch

from geo3d.rotations._checks import check_finite, check_pair, check_tensor, values_enabled

__all__ = [
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_multiply",
    "quat_conjugate",
    "quat_apply",
    "quat_slerp",
    "quat_distance",
    "quat_normalize",
]


def _check_quat_norm(name: str, q: torch.Tensor) -> None:
    """ValueError unless every quaternion of ``q`` (*, 4) is finite and non-zero. Decided
    on the max-abs component (a squared norm would underflow to 0 for |q| ~ 1e-23 in
    float32 and overflow for 1e19)."""
    if values_enabled() and q.numel() > 0:
        lo, hi = torch.aminmax(q.detach().abs().amax(-1))  # NaN propagates into both
        if not (lo.item() > 0 and hi.item() < math.inf):
            raise ValueError(
                f"{name}: expected finite quaternions with non-zero norm, "
                "got NaN/inf or a zero quaternion"
            )


def _rescaled(q: torch.Tensor) -> torch.Tensor:
    """``q / max|q_i|`` (max-abs component 1, so squared norms in [1, 4] never under- or
    overflow). Every caller's result is invariant to the scale of ``q``, so the divisor
    is detached (its derivative contributes exactly 0)."""
    return q / q.detach().abs().amax(-1, keepdim=True)


def quat_normalize(q: torch.Tensor) -> torch.Tensor:
    """Normalise quaternions to unit norm and canonicalise to ``w >= 0``.

    Rescaled by the max-abs component first, so any finite non-zero ``q`` works (e.g.
    ``|q| = 1e-30`` or ``1e30`` in float32).

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.

    Returns:
        Unit quaternions with ``w >= 0``, shape :math:`(*, 4)`.
    """
    check_tensor("q", q, (4,))
    _check_quat_norm("q", q)
    return _unit_canonical(q)


def quat_to_matrix(q: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Rotation matrices from unit quaternions.

    By default ``q`` is taken to be unit (the cheapest exact formula, ~25 elementwise
    kernels); a small norm drift ``|q| = 1 + ε`` gives an error ``O(ε)``. With
    ``normalize=True`` any non-zero quaternion is accepted and normalised first, like
    ``scipy.spatial.transform.Rotation.from_quat``. Non-finite input raises ``ValueError``.

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)` (unit unless ``normalize``).
        normalize: normalise ``q`` (non-zero) before converting.

    Returns:
        Rotation matrices, shape :math:`(*, 3, 3)`.
    """
    check_tensor("q", q, (4,))
    w, x, y, z = q.unbind(-1)
    if normalize:
        _check_quat_norm("q", q)
        w, x, y, z = _rescaled(q).unbind(-1)  # no under/overflow of the squared norm
        n2 = (w * w + x * x) + (y * y + z * z)
        return _matrix_from_quat_comps(w, x, y, z, 2.0 / n2)
    check_finite("q", q)
    return _matrix_from_quat_comps(w, x, y, z, 2.0)


def _matrix_from_quat_comps(w, x, y, z, scale2) -> torch.Tensor:
    """Rotation matrices (*, 3, 3) from quaternion components; ``scale2`` = 2/|q|² or 2.

    Scalar components, one ``stack``: also what the fused (compiled) kernels use."""
    x2, y2, z2 = x * scale2, y * scale2, z * scale2
    xx, yy, zz = x * x2, y * y2, z * z2
    xy, xz, yz = x * y2, x * z2, y * z2
    wx, wy, wz = w * x2, w * y2, w * z2
    out = torch.stack(
        (
            1.0 - (yy + zz), xy - wz, xz + wy,
            xy + wz, 1.0 - (xx + zz), yz - wx,
            xz - wy, yz + wx, 1.0 - (xx + yy),
        ),
        dim=-1,
    )  # fmt: skip
    return out.unflatten(-1, (3, 3))


def _shepperd(R: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Unnormalised quaternion components (up to sign and a positive scale), chosen by
    scipy's robust branch selection: the largest of tr R, R00, R11, R22 (i.e. of 4w², 4x²,
    4y², 4z²) picks row i of the symmetric matrix 4 q qᵀ, which is 4 q_i q. Selection is
    elementwise (``torch.where``), without Python branching or gathers, so it also fuses
    into a single kernel under ``torch.compile``."""
    return _shepperd_comps(*R.flatten(-2).unbind(-1))


def _shepperd_comps(m00, m01, m02, m10, m11, m12, m20, m21, m22) -> tuple[torch.Tensor, ...]:
    """:func:`_shepperd` on the nine entries (any equal shapes)."""
    tr = m00 + m11 + m22
    a = m21 - m12
    b = m02 - m20
    c = m10 - m01
    d = m01 + m10
    e = m02 + m20
    f = m12 + m21
    # same tie-breaking as argmax over (tr, m00, m11, m22): the first maximum wins
    cw = (tr >= m00) & (tr >= m11) & (tr >= m22)
    cx = (m00 >= m11) & (m00 >= m22)
    cy = m11 >= m22
    w = torch.where(cw, 1.0 + tr, torch.where(cx, a, torch.where(cy, b, c)))
    x = torch.where(cw, a, torch.where(cx, 1.0 + 2.0 * m00 - tr, torch.where(cy, d, e)))
    y = torch.where(cw, b, torch.where(cx, d, torch.where(cy, 1.0 + 2.0 * m11 - tr, f)))
    z = torch.where(cw, c, torch.where(cx, e, torch.where(cy, f, 1.0 + 2.0 * m22 - tr)))
    return w, x, y, z


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions from rotation matrices (Shepperd / scipy branch selection).

    The branch (largest of ``w^2, x^2, y^2, z^2``) is chosen per element without Python
    branching, so the result is accurate everywhere, including rotations by π.
    Matrices that are not rotations follow the package policy (see
    :mod:`geo3d.rotations`): ``det > 0`` gives the quaternion of the nearest rotation
    (like scipy >= 1.15), ``det <= 0`` or NaN/inf raises.

    Args:
        R: rotation matrices, shape :math:`(*, 3, 3)`.

    Returns:
        Unit quaternions ``wxyz`` with ``w >= 0``, shape :math:`(*, 4)`.

    Raises:
        ValueError: wrong shape; (value checks on) non-finite ``R`` or ``det(R) <= 0``.

    Reference:
        S. W. Shepperd, "Quaternion from rotation matrix", J. Guidance and Control 1(3),
        1978, DOI 10.2514/3.55767; branch rule of scipy's ``Rotation.from_matrix``.

    Example:
        >>> matrix_to_quat(torch.diag(torch.tensor([1.0, -1.0, -1.0])))
        tensor([0., 1., 0., 0.])
    """
    check_tensor("R", R, (3, 3))
    from geo3d.rotations._matrix_input import rotation_rows

    return _quat_from_rows(rotation_rows("R", R)).view(*R.shape[:-2], 4)


def _quat_from_rows(X: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (N, 4), w >= 0, from the entries of N rotations as rows (9, N)."""
    w, x, y, z = _shepperd_comps(*X.unbind(0))
    k = torch.copysign(torch.rsqrt((w * w + x * x) + (y * y + z * z)), w)
    return torch.stack((w * k, x * k, y * k, z * k), dim=-1)


def _quat_from_rotation(R: torch.Tensor) -> torch.Tensor:
    """matrix_to_quat without checks (R assumed a rotation)."""
    w, x, y, z = _shepperd(R)
    n2 = (w * w + x * x) + (y * y + z * z)
    # copysign folds the w >= 0 canonicalisation into the normalisation (w = +0 stays +).
    k = torch.copysign(torch.rsqrt(n2), w)
    return torch.stack((w * k, x * k, y * k, z * k), dim=-1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    return torch.linalg.cross(a, b, dim=-1)


def quat_multiply(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``p ⊗ q`` (rotation ``q`` first, then ``p``).

    Args:
        p: quaternions ``wxyz``, shape :math:`(*, 4)`.
        q: quaternions ``wxyz``, shape :math:`(*, 4)`, broadcastable with ``p``.

    Returns:
        Product, shape :math:`(*, 4)` (broadcast). Not renormalised or canonicalised.
    """
    check_tensor("p", p, (4,))
    check_tensor("q", q, (4,))
    check_pair("p", p, 1, "q", q, 1)
    pw, pu = p[..., :1], p[..., 1:]
    qw, qu = q[..., :1], q[..., 1:]
    w = pw * qw - (pu * qu).sum(-1, keepdim=True)
    u = torch.addcmul(pw * qu, qw, pu) + _cross(pu, qu)
    return torch.cat((w, u), dim=-1)


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """Quaternion conjugate ``(w, -x, -y, -z)`` (the inverse rotation for unit ``q``).

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)`.

    Returns:
        Shape :math:`(*, 4)`.
    """
    check_tensor("q", q, (4,))
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_apply(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors by quaternions: ``v' = R(q) v``.

    Non-unit quaternions are implicitly normalised.

    Args:
        q: quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.
        v: vectors, shape :math:`(*, 3)`, broadcastable with ``q``'s batch dims.

    Returns:
        Rotated vectors, shape :math:`(*, 3)` (broadcast).
    """
    check_tensor("q", q, (4,))
    check_tensor("v", v, (3,))
    check_pair("q", q, 1, "v", v, 1)
    _check_quat_norm("q", q)
    q = _rescaled(q)
    n2 = (q * q).sum(-1, keepdim=True)
    w, u = q[..., :1], q[..., 1:]
    uv = _cross(u, v)
    return v + (2.0 / n2) * (w * uv + _cross(u, uv))


def _unit_canonical(q: torch.Tensor) -> torch.Tensor:
    q = _rescaled(q)
    n2 = (q * q).sum(-1, keepdim=True)
    return q * torch.copysign(torch.rsqrt(n2), q[..., :1])


def quat_slerp(q0: torch.Tensor, q1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical linear interpolation along the shortest arc.

    ``quat_slerp(q0, q1, 0) = q0``, ``quat_slerp(q0, q1, 1) = ±q1``; the rotation moves at
    constant angular speed along the geodesic of SO(3) (like scipy's ``Slerp``).

    Args:
        q0: start quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.
        q1: end quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.
        t: interpolation times, a float or a tensor of shape :math:`(*)` broadcastable with
            the batch dims of ``q0``/``q1``.

    Returns:
        Unit quaternions with ``w >= 0``, shape :math:`(*, 4)` (broadcast).
    """
    check_tensor("q0", q0, (4,))
    check_tensor("q1", q1, (4,))
    batch = check_pair("q0", q0, 1, "q1", q1, 1)
    _check_quat_norm("q0", q0)
    _check_quat_norm("q1", q1)
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=q0.dtype, device=q0.device)
    elif not t.is_floating_point():
        raise ValueError(f"t: expected a floating-point tensor or a float, got dtype {t.dtype}")
    else:
        check_pair("q0", q0[..., 0], 0, "t", t, 0)
        try:
            torch.broadcast_shapes(batch, t.shape)
        except RuntimeError:
            raise ValueError(
                f"t: expected a shape broadcastable with the batch dims {tuple(batch)} of "
                f"q0/q1, got {tuple(t.shape)}"
            ) from None
    q0 = _unit_canonical(q0)
    q1 = _unit_canonical(q1)
    r = quat_multiply(quat_conjugate(q0), q1)
    rw, ru = r[..., :1], r[..., 1:]
    # Shortest arc: the relative rotation's quaternion with w >= 0.
    sgn = torch.copysign(torch.ones_like(rw), rw)
    rw, ru = rw * sgn, ru * sgn
    nu = torch.linalg.vector_norm(ru, dim=-1, keepdim=True)
    phi = torch.atan2(nu, rw)  # half of the relative angle, in [0, π/2]
    tt = t.unsqueeze(-1)
    # sin(t φ) / sin(φ) = t sinc(t φ) / sinc(φ); sinc(φ) >= 2/π here, no singularity.
    k = tt * torch.sinc(tt * phi / torch.pi) / torch.sinc(phi / torch.pi)
    rt = torch.cat((torch.cos(tt * phi).expand(*k.shape), ru * k), dim=-1)
    out = quat_multiply(q0, rt)
    return out * torch.copysign(torch.ones_like(out[..., :1]), out[..., :1])


def quat_distance(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Geodesic (rotation-angle) distance between the rotations of two quaternions.

    ``q`` and ``-q`` are the same rotation. Computed with ``atan2`` of the relative
    quaternion, so the value is accurate near 0 and π and gradients stay finite there.

    Args:
        q1: quaternions ``wxyz``, shape :math:`(*, 4)`, non-zero.
        q2: quaternions ``wxyz``, shape :math:`(*, 4)`, broadcastable with ``q1``.

    Returns:
        Angles in radians in ``[0, π]``, shape :math:`(*)`.
    """
    check_tensor("q1", q1, (4,))
    check_tensor("q2", q2, (4,))
    check_pair("q1", q1, 1, "q2", q2, 1)
    _check_quat_norm("q1", q1)
    _check_quat_norm("q2", q2)
    # the angle does not depend on the scales: rescaled so that the product cannot
    # under/overflow
    r = quat_multiply(quat_conjugate(_rescaled(q1)), _rescaled(q2))
    rw = r[..., 0]
    # |w| as w·sign(w) with sign(±0) = ±1: at a distance of exactly π (w = 0) the gradient
    # is the one-sided limit from w > 0, not abs's zero subgradient.
    aw = rw * torch.copysign(torch.ones_like(rw), rw)
    return 2.0 * torch.atan2(torch.linalg.vector_norm(r[..., 1:], dim=-1), aw)
