"""Test-time refinement of an assembly: pull matched fracture surfaces together, push
interpenetrating pieces apart (robust Gauss–Newton / Levenberg–Marquardt on SE(3)).

Energy over the poses ``G_i`` of the non-anchor pieces (the anchor stays fixed), with
``q = G_i p`` the placed points and ``ρ`` the Cauchy loss ``ρ(r) = c²/2 log(1 + r²/c²)``:

* matched points (``w_match``): ``Σ w ρ(|q_i[a] - q_j[b]|)`` over the given matches;
* fracture surfaces (``w_surface``): point-to-plane ICP between the matched regions of two
  pieces: every matched point of ``i`` is paired with its nearest matched point ``y`` of
  ``j`` (and vice versa), residual ``n_y · (q - y)``;
* interpenetration (``w_pen``): every point ``q`` of a piece against its nearest point
  ``y`` (normal ``n_y``) on any other piece within ``pen_radius``, residual
  ``min(n_y · (q - y) + margin, 0)``.
  This is the signed distance to the other piece's surface in the point-to-plane
  approximation: exact for a locally planar surface near ``y``; deep inside a thin or
  strongly curved piece the nearest point may lie on the far side and under-report.
  Only points within ``pen_radius`` (5% of the piece scale) of the other surface count:
  a correct assembly penetrates only shallowly, and far points are where wrongly oriented
  normals (below) would report deep false penetrations.

Normals: the data's (``normals``, e.g. :class:`geo3d.datasets.BreakingBad`'s
``with_normals``, sampled face normals) or, by default, estimated per piece by local PCA
(the smallest-eigenvalue eigenvector of the covariance of the ``k`` nearest neighbours)
and oriented away from the piece's centroid. The orientation rule is exact for
star-shaped pieces and wrong on concave parts (the inside of a bowl fragment), where the
penetration term then pushes the wrong way; its weight is kept small for that reason.

Each step linearises all residuals in left-multiplied se(3) increments about the centroid
of the placed points (``G ← exp(ξ) G``, translation-first ``ξ = (v, ω)``, the
:func:`geo3d.rotations.se3_exp` convention), solves the damped normal equations
``(H + λ tr(H)/n I) ξ = -g`` (isotropic damping, so each step is equivariant under a
rigid motion of the whole assembly), and keeps the step only if the energy decreases
(otherwise ``λ`` grows tenfold). Associations (nearest neighbours) are recomputed every
step. Gauss–Newton rather than Adam: Adam's per-coordinate step sizes depend on the
orientation of the frame, which would break equivariance.

Reference:
    Y. Chen, G. Medioni, "Object modelling by registration of multiple range images",
    Image Vision Comput. 10(3), 1992, DOI 10.1016/0262-8856(92)90066-C (point-to-plane);
    Jigsaw (Lu et al., NeurIPS 2023, arXiv:2305.17975) for the global refinement of an
    assembly from fracture-surface matches.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["estimate_normals", "refine_poses", "assembly_energy"]


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def estimate_normals(points: Tensor, k: int = 16) -> Tensor:
    """Outward unit normals of each piece by local PCA, oriented away from its centroid.

    Args:
        points: pieces, shape :math:`(*, N, 3)`.
        k: neighbours per point (clamped to ``N``), >= 3.

    Returns:
        Unit normals, shape :math:`(*, N, 3)` (rotate with the points: equivariant).

    Raises:
        ValueError: bad shape or ``k``.

    Example:
        >>> t = torch.linspace(0, 6.28, 64)
        >>> ring = torch.stack([t.cos(), t.sin(), torch.zeros(64)], -1)
        >>> pts = torch.cat([ring * 1.0, ring * 1.0 + torch.tensor([0, 0, 0.1])])
        >>> n = estimate_normals(pts, k=8)
        >>> bool(((n * pts).sum(-1) > 0).all())
        True
    """
    from geo3d.ops import knn

    if not isinstance(points, Tensor) or points.dim() < 2 or points.shape[-1] != 3 or \
            not points.is_floating_point():
        raise ValueError(f"points: expected a floating-point tensor of shape (*, N, 3), got "
                         f"{_shape(points)}")
    if not isinstance(k, int) or k < 3:
        raise ValueError(f"k: expected an int >= 3, got {k!r}")
    batch, n = points.shape[:-2], points.shape[-2]
    x = points.reshape(-1, n, 3)
    k = min(k, n)
    idx = knn(x, x, k).idx  # (B, N, k)
    nb = torch.gather(x[:, None].expand(-1, n, -1, -1), 2,
                      idx[..., None].expand(-1, -1, -1, 3))  # (B, N, k, 3)
    d = nb - nb.mean(2, keepdim=True)
    cov = d.transpose(-1, -2) @ d
    _, vec = torch.linalg.eigh(cov)
    nrm = vec[..., 0]  # smallest eigenvalue
    out = x - x.mean(1, keepdim=True)
    sign = torch.where((nrm * out).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(x.dtype)
    return (nrm * sign).reshape(*batch, n, 3)


def _skew_cross(a: Tensor) -> Tensor:
    """``[a]×`` for a (M, 3) -> (M, 3, 3)."""
    z = torch.zeros_like(a[:, 0])
    return torch.stack([
        torch.stack([z, -a[:, 2], a[:, 1]], -1),
        torch.stack([a[:, 2], z, -a[:, 0]], -1),
        torch.stack([-a[:, 1], a[:, 0], z], -1),
    ], -2)


class _Terms:
    """Residuals r (M, d) with their Jacobian blocks Ji (M, d, 6) w.r.t. the increment of
    piece pi and Jj w.r.t. that of piece pj, and weights w (M,)."""

    def __init__(self) -> None:
        self.items: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]] = []

    def add(self, r: Tensor, Ji: Tensor, pi: Tensor, Jj: Tensor, pj: Tensor,
            w: Tensor) -> None:
        if r.shape[0]:
            self.items.append((r, Ji, pi, Jj, pj, w))


def _plane_terms(terms: _Terms, a: Tensor, n: Tensor, res: Tensor, pi: Tensor, pj: Tensor,
                 w: Tensor) -> None:
    """Point-to-plane residual ``res`` of centred point ``a`` of piece pi against a plane
    (normal ``n``) carried by piece pj: J_i = [n, a × n], J_j = -J_i."""
    Ji = torch.cat([n, torch.linalg.cross(a, n)], -1)[:, None]  # (M, 1, 6)
    terms.add(res[:, None], Ji, pi, -Ji, pj, w)


def _cauchy(r2: Tensor, c2: float) -> tuple[Tensor, Tensor]:
    """(ρ(r), IRLS weight ρ'(r)/r) of the Cauchy loss for squared residual norms r2."""
    return 0.5 * c2 * torch.log1p(r2 / c2), 1.0 / (1.0 + r2 / c2)


class _Plan:
    """Index structure of the associations, built once per refinement (matches fixed).

    ``fixed``: concatenated fixed matches ``(pi, ii, pj, jj, w)``. ``icp``: both
    directions of every matched pair, padded: source piece ``s (D,)``, source indices
    ``us (D, L)``, target piece ``t (D,)``, target indices ``ut (D, L)``, lengths.
    ``pen``: the valid pieces ``v (V,)`` and, per valid piece, the flat indices
    ``(V, (V-1) N)`` of the points of all other valid pieces."""

    def __init__(self, matches: Mapping[tuple[int, int], tuple[Tensor, Tensor, Tensor]],
                 valid: list[bool], P: int, N: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        fixed: list[list[Tensor]] = [[], [], [], [], []]
        dirs: list[tuple[int, Tensor, int, Tensor]] = []
        for (i, j), (ii, jj, w) in sorted(matches.items()):
            if not (valid[i] and valid[j]) or ii.numel() == 0:
                continue
            ii, jj = ii.to(device), jj.to(device)
            fixed[0].append(torch.full_like(ii, i))
            fixed[1].append(ii)
            fixed[2].append(torch.full_like(jj, j))
            fixed[3].append(jj)
            fixed[4].append(w.to(device, dtype))
            ui, uj = torch.unique(ii), torch.unique(jj)
            dirs += [(i, ui, j, uj), (j, uj, i, ui)]
        self.fixed = [torch.cat(f) for f in fixed] if fixed[0] else None
        self.icp = None
        if dirs:
            L = max(max(len(d[1]), len(d[3])) for d in dirs)
            us = torch.zeros(len(dirs), L, dtype=torch.long, device=device)
            ut = torch.zeros_like(us)
            for k, (_, a, _, b) in enumerate(dirs):
                us[k, :len(a)] = a
                ut[k, :len(b)] = b
            self.icp = (torch.tensor([d[0] for d in dirs], device=device), us,
                        torch.tensor([d[2] for d in dirs], device=device), ut,
                        torch.tensor([len(d[1]) for d in dirs], device=device),
                        torch.tensor([len(d[3]) for d in dirs], device=device))
        v = [i for i in range(P) if valid[i]]
        self.pen = None
        if len(v) > 1:
            flat = torch.arange(P * N, device=device).view(P, N)
            others = torch.stack([flat[[j for j in v if j != i]].reshape(-1) for i in v])
            self.pen = (torch.tensor(v, device=device), others)
        self.N = N


def _nn(x: Tensor, y: Tensor, xl: Tensor | None = None,
        yl: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Nearest neighbour (index, squared distance) in ``y`` of every point of ``x``,
    batched (exact, ties to the lower index: :func:`geo3d.ops.knn`)."""
    from geo3d.ops import knn

    out = knn(x, y, 1, xl, yl)
    return out.idx[..., 0], out.dists[..., 0]


def _associate(q: Tensor, plan: _Plan, icp_radius: float, surface: bool,
               pen: bool, pen_radius: float = float("inf")) -> dict[str, tuple[Tensor, ...]]:
    """Nearest-neighbour associations at the placed points ``q``: ICP pairs ``(ps, src,
    pt, dst)`` within ``icp_radius``, and for every point of every valid piece the flat
    index of its nearest point on another valid piece (and whether it is within
    ``pen_radius``)."""
    dev = q.device
    assoc: dict[str, tuple[Tensor, ...]] = {}
    if plan.icp is not None and surface:
        s, us, t, ut, ls, lt = plan.icp
        k, d2 = _nn(q[s[:, None], us], q[t[:, None], ut], ls, lt)
        L = us.shape[1]
        keep = (torch.arange(L, device=dev)[None] < ls[:, None]) & (d2 < icp_radius ** 2)
        row, col = keep.nonzero(as_tuple=True)
        assoc["icp"] = (s[row], us[row, col], t[row], ut[row, k[row, col]])
    if plan.pen is not None and pen:
        v, others = plan.pen
        k, d2 = _nn(q[v], q.reshape(-1, 3)[others])
        # (V,), (V, N) nearest other point, (V, N) close enough to count
        assoc["pen"] = (v, torch.gather(others, 1, k), d2 < pen_radius ** 2)
    return assoc


def _build_terms(
    q: Tensor, nrm: Tensor, o: Tensor, plan: _Plan, assoc: dict[str, tuple[Tensor, ...]],
    w_match: float, w_surface: float, w_pen: float, margin: float,
) -> _Terms:
    """Residuals and Jacobians at the placed points ``q`` for fixed associations."""
    terms = _Terms()
    dev, dt = q.device, q.dtype
    if plan.fixed is not None and w_match > 0:  # fixed matches, point to point
        pi, ii, pj, jj, w = plan.fixed
        a, b = q[pi, ii] - o, q[pj, jj] - o
        eye = torch.eye(3, dtype=dt, device=dev).expand(len(a), 3, 3)
        Ji = torch.cat([eye, -_skew_cross(a)], -1)
        Jj = -torch.cat([eye, -_skew_cross(b)], -1)
        terms.add(a - b, Ji, pi, Jj, pj, w * w_match)
    if "icp" in assoc and w_surface > 0:  # ICP between the matched regions
        ps, src, pt, dst = assoc["icp"]
        n = nrm[pt, dst]
        res = ((q[ps, src] - q[pt, dst]) * n).sum(-1)
        _plane_terms(terms, q[ps, src] - o, n, res, ps, pt, torch.full_like(res, w_surface))
    if "pen" in assoc and w_pen > 0:  # interpenetration
        v, flat, near = assoc["pen"]
        qf, nf = q.reshape(-1, 3), nrm.reshape(-1, 3)
        y, n = qf[flat], nf[flat]
        sd = ((q[v] - y) * n).sum(-1) + margin
        row, col = ((sd < 0) & near).nonzero(as_tuple=True)
        if row.numel():
            pi = v[row]
            _plane_terms(terms, q[pi, col] - o, n[row, col], sd[row, col], pi,
                         flat[row, col] // plan.N, torch.full_like(sd[row, col], w_pen))
    return terms


def _energy(terms: _Terms, c2: float) -> Tensor:
    tot = None
    for r, _, _, _, _, w in terms.items:
        rho, _ = _cauchy((r * r).sum(-1), c2)
        e = (w * rho).sum()
        tot = e if tot is None else tot + e
    return tot if tot is not None else torch.zeros(())


def _place(points: Tensor, poses: Tensor) -> Tensor:
    return points @ poses[:, :3, :3].transpose(-1, -2) + poses[:, None, :3, 3]


def _compute_dtype(points: Tensor) -> Tensor:
    """float16/bfloat16 points promoted to float32 (eigh/solve have no half kernels, and
    half precision cannot resolve the LM steps); other dtypes unchanged."""
    return points.float() if points.dtype in (torch.float16, torch.bfloat16) else points


#: largest deviation of a starting pose from a rigid motion (|R Rᵀ - I|, |det R - 1|, last
#: row): float32 network rotations cast to float64 are ~1e-6 off
_RIGID_TOL = 1e-3


def _check_rigid(poses: Tensor, valid: list[bool]) -> None:
    """ValueError naming ``poses`` unless every valid piece's pose is a finite rigid motion
    (the refinement composes SE(3) increments with it: a scaled or sheared start would be
    kept and silently distort the piece)."""
    idx = [i for i, v in enumerate(valid) if v]
    if not idx:
        return
    T = poses[idx].detach().to(torch.float64)
    if not bool(torch.isfinite(T).all()):
        raise ValueError("poses: expected finite rigid motions, got NaN or inf")
    R = T[:, :3, :3]
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    last = T[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    err = torch.stack([(R @ R.transpose(-1, -2) - eye).abs().amax((-1, -2)),
                       (torch.linalg.det(R) - 1).abs(), last.abs().amax(-1)], -1).amax(-1)
    if bool((err > _RIGID_TOL).any()):
        k = int(err.argmax())
        raise ValueError(f"poses: expected rigid motions (orthonormal rotation, det +1, last "
                         f"row 0 0 0 1), got a deviation of {float(err[k]):.3g} for piece "
                         f"{idx[k]}")


def _parse_matches(matches: object, P: int,
                   N: int) -> Mapping[tuple[int, int], tuple[Tensor, Tensor, Tensor]]:
    """The matches as a dict, checked against ``P`` pieces of ``N`` points each."""
    if matches is None:
        return {}
    if hasattr(matches, "matches"):
        matches = matches.matches
    if not isinstance(matches, Mapping):
        raise ValueError(f"matches: expected a dict {{(i, j): (idx_i, idx_j, w)}} or a "
                         f"PairwiseResult, got {type(matches).__name__}")
    for key, val in matches.items():
        if not (isinstance(key, tuple) and len(key) == 2 and
                all(isinstance(k, int) and not isinstance(k, bool) for k in key) and
                0 <= key[0] < P and 0 <= key[1] < P and key[0] != key[1]):
            raise ValueError(f"matches: expected keys (i, j) of two different pieces in "
                             f"[0, {P}), got {key!r}")
        if not (isinstance(val, (tuple, list)) and len(val) == 3 and
                all(isinstance(v, Tensor) and v.dim() == 1 for v in val) and
                val[0].shape == val[1].shape == val[2].shape):
            raise ValueError(f"matches[{key}]: expected (idx_i (M,), idx_j (M,), w (M,)) "
                             f"tensors, got {type(val).__name__}")
        ii, jj, w = val
        if ii.is_floating_point() or jj.is_floating_point() or not w.is_floating_point():
            raise ValueError(f"matches[{key}]: expected integer indices and float weights, "
                             f"got {ii.dtype}, {jj.dtype}, {w.dtype}")
        if ii.numel() and not bool((ii >= 0).all() and (ii < N).all() and (jj >= 0).all()
                                   and (jj < N).all()):
            raise ValueError(f"matches[{key}]: expected point indices in [0, {N}), got "
                             f"[{int(min(ii.min(), jj.min()))}, "
                             f"{int(max(ii.max(), jj.max()))}]")
        if w.numel() and not bool(torch.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(f"matches[{key}]: expected finite non-negative weights")
    return matches


def assembly_energy(
    points: Tensor,
    poses: Tensor,
    matches: object = None,
    *,
    valid: Tensor | None = None,
    normals: Tensor | None = None,
    w_match: float = 1.0,
    w_surface: float = 0.0,
    w_pen: float = 0.0,
    margin: float = 0.0,
    icp_radius: float = float("inf"),
    pen_radius: float = float("inf"),
    robust_scale: float | None = None,
) -> Tensor:
    """The energy :func:`refine_poses` minimises (see the module docstring), at ``poses``.

    With ``robust_scale=None`` the plain least-squares energy ``Σ w r²/2`` (no Cauchy
    loss): e.g. ``w_match=1`` and the rest 0 gives half the weighted sum of squared matched
    distances; ``w_pen=1``, ``w_match=0`` half the sum of squared penetration depths.

    Args:
        points: shape :math:`(P, N, 3)`; poses: :math:`(P, 4, 4)`; others as in
            :func:`refine_poses` (lengths absolute here, in the units of ``points``).

    Returns:
        Scalar energy (dtype of ``points``).

    Raises:
        ValueError: ``matches`` neither a dict nor a :class:`PairwiseResult`, or with
            pieces/point indices out of range.

    Example:
        >>> pts = torch.zeros(2, 1, 3, dtype=torch.float64)
        >>> T = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
        >>> T[1, 0, 3] = 2.0  # the two matched points are 2 apart: energy 2²/2
        >>> m = {(0, 1): (torch.tensor([0]), torch.tensor([0]), torch.ones(1))}
        >>> float(assembly_energy(pts, T, m, normals=torch.zeros(2, 1, 3)))
        2.0
    """
    P, N = points.shape[:2]
    valid_l = [True] * P if valid is None else valid.bool().tolist()
    out_dtype = points.dtype
    points = _compute_dtype(points)
    q = _place(points, poses.to(points.dtype))
    if normals is None:
        normals = estimate_normals(points)
    nrm = normals.to(points.dtype) @ poses[:, :3, :3].to(points.dtype).transpose(-1, -2)
    o = q[torch.tensor(valid_l, device=q.device)].reshape(-1, 3).mean(0)
    plan = _Plan(_parse_matches(matches, P, N), valid_l, P, N, points.dtype, points.device)
    assoc = _associate(q, plan, icp_radius, w_surface > 0, w_pen > 0, pen_radius)
    terms = _build_terms(q, nrm, o, plan, assoc, w_match, w_surface, w_pen, margin)
    if robust_scale is None:
        tot = points.new_zeros(())
        for r, *_, w in terms.items:
            tot = tot + 0.5 * (w * (r * r).sum(-1)).sum()
        return tot.to(out_dtype)
    return _energy(terms, float(robust_scale) ** 2).to(out_dtype)


def refine_poses(
    points: Tensor,
    poses: Tensor,
    matches: object = None,
    anchor: int = 0,
    *,
    valid: Tensor | None = None,
    normals: Tensor | None = None,
    steps: int = 10,
    w_match: float = 0.1,
    w_surface: float = 1.0,
    w_pen: float = 0.1,
    rel_scale: float = 0.03,
    rel_margin: float = 0.005,
    rel_icp_radius: float = 0.1,
    rel_pen_radius: float = 0.05,
    damping: float = 1e-4,
    k_normals: int = 16,
) -> Tensor:
    """Refine the poses of all non-anchor pieces of one object (robust Gauss–Newton).

    Minimises the energy of the module docstring from ``poses`` (the best hypothesis) in
    at most ``steps`` accepted or rejected LM steps; the anchor's pose is returned
    unchanged (bit for bit). Lengths are relative to ``s`` = the mean :func:`piece_scale`
    of the valid pieces: Cauchy scale ``rel_scale s``, penetration margin ``rel_margin s``,
    ICP pairing radius ``rel_icp_radius s``, penetration radius ``rel_pen_radius s``.

    Args:
        points: input points of the pieces, shape :math:`(P, N, 3)`.
        poses: initial poses (input -> common frame), shape :math:`(P, 4, 4)`.
        matches: ``{(i, j): (idx_i, idx_j, w)}`` matched point indices and weights, e.g.
            :attr:`PairwiseResult.matches` (or the :class:`PairwiseResult` itself);
            ``None``: penetration only.
        anchor: index of the piece that stays fixed.
        valid: valid pieces, shape :math:`(P,)` bool (``None``: all). Invalid pieces are
            ignored and keep their pose.
        normals: outward unit normals in the pieces' input frames, shape
            :math:`(P, N, 3)` (``None``: :func:`estimate_normals`).
        steps: LM iterations, >= 0.
        w_match, w_surface, w_pen: weights of the three terms.
        rel_scale, rel_margin, rel_icp_radius, rel_pen_radius: see above.
        damping: initial LM damping (relative to ``tr(H)/n``).
        k_normals: neighbours of the normal estimate.

    Returns:
        Refined poses, shape :math:`(P, 4, 4)` (dtype of ``poses``).

    Raises:
        ValueError: bad shapes, an ``anchor`` out of range, bad ``steps``, a valid piece's
            starting pose that is not a rigid motion, ``matches`` with pieces or point
            indices out of range.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pts = torch.randn(2, 32, 3, generator=g, dtype=torch.float64)
        >>> T = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
        >>> T[1, :3, 3] = 0.05  # piece 1 displaced; matched to piece 0 point for point
        >>> m = {(0, 1): (torch.arange(32), torch.arange(32), torch.ones(32, dtype=torch.float64))}
        >>> pts[1] = pts[0]
        >>> out = refine_poses(pts, T, m, 0, w_surface=0.0, w_pen=0.0, w_match=1.0)
        >>> bool(out[1, :3, 3].abs().max() < 1e-6)
        True
    """
    from geo3d.apps.assembly._matching import piece_scale

    from geo3d.rotations import se3_exp

    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3 or \
            not points.is_floating_point():
        raise ValueError(f"points: expected a floating-point tensor of shape (P, N, 3), got "
                         f"{_shape(points)}")
    P, N = points.shape[:2]
    if not isinstance(poses, Tensor) or poses.shape != (P, 4, 4) or \
            not poses.is_floating_point():
        raise ValueError(f"poses: expected a floating-point tensor of shape ({P}, 4, 4), got "
                         f"{_shape(poses)}")
    if valid is None:
        valid = torch.ones(P, dtype=torch.bool)
    if not isinstance(valid, Tensor) or valid.shape != (P,):
        raise ValueError(f"valid: expected a bool tensor of shape ({P},), got {_shape(valid)}")
    valid_l = valid.bool().tolist()
    if not isinstance(anchor, int) or not 0 <= anchor < P or not valid_l[anchor]:
        raise ValueError(f"anchor: expected the index of a valid piece in [0, {P}), got "
                         f"{anchor!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
    if normals is not None and (not isinstance(normals, Tensor) or normals.shape != (P, N, 3)):
        raise ValueError(f"normals: expected shape ({P}, {N}, 3), got {_shape(normals)}")
    _check_rigid(poses, valid_l)
    match_d = _parse_matches(matches, P, N)
    points = _compute_dtype(points)
    out_dtype = poses.dtype
    dt, dev = points.dtype, points.device
    G = poses.to(dt).clone()
    free = [i for i in range(P) if valid_l[i] and i != anchor]
    if steps == 0 or not free:
        return poses.clone()
    vmask = torch.tensor(valid_l, device=dev)
    s = float(piece_scale(points[vmask]).mean())
    c2 = (rel_scale * s) ** 2
    margin, icp_r, pen_r = rel_margin * s, rel_icp_radius * s, rel_pen_radius * s
    nrm0 = (estimate_normals(points, k_normals) if normals is None else normals).to(dt)
    nf = len(free)
    plan = _Plan(match_d, valid_l, P, N, dt, dev)

    def evaluate(Gc: Tensor, assoc: dict | None) -> tuple[_Terms, Tensor, Tensor, dict]:
        # assoc None: re-associate at Gc; else residuals for the given associations
        # (a smooth energy in Gc, so the LM acceptance test is meaningful)
        q = _place(points, Gc)
        nrm = nrm0 @ Gc[:, :3, :3].transpose(-1, -2)
        o = q[vmask].reshape(-1, 3).mean(0)
        if assoc is None:
            assoc = _associate(q, plan, icp_r, w_surface > 0, w_pen > 0, pen_r)
        terms = _build_terms(q, nrm, o, plan, assoc, w_match, w_surface, w_pen, margin)
        return terms, _energy(terms, c2).to(dt), o, assoc

    terms, energy, o, assoc = evaluate(G, None)
    lam = float(damping)
    # smallest damping: below the dtype's resolution it no longer regularises H
    lam_min = max(1e-12, float(torch.finfo(dt).eps))
    for _ in range(steps):
        H = torch.zeros(P, P, 6, 6, dtype=dt, device=dev)
        g = torch.zeros(P, 6, dtype=dt, device=dev)
        for r, Ji, pi, Jj, pj, w in terms.items:
            _, wr = _cauchy((r * r).sum(-1), c2)
            ww = (w * wr)[:, None, None]
            JiT = Ji.transpose(-1, -2)
            JjT = Jj.transpose(-1, -2)
            H.index_put_((pi, pi), JiT @ (ww * Ji), accumulate=True)
            H.index_put_((pj, pj), JjT @ (ww * Jj), accumulate=True)
            H.index_put_((pi, pj), JiT @ (ww * Jj), accumulate=True)
            H.index_put_((pj, pi), JjT @ (ww * Ji), accumulate=True)
            g.index_put_((pi,), (JiT @ (ww * r[..., None]))[..., 0], accumulate=True)
            g.index_put_((pj,), (JjT @ (ww * r[..., None]))[..., 0], accumulate=True)
        idx = torch.tensor(free, device=dev)
        Hf = H[idx][:, idx].permute(0, 2, 1, 3).reshape(6 * nf, 6 * nf)
        gf = g[idx].reshape(6 * nf)
        if not bool(Hf.abs().sum() > 0) or not bool(torch.isfinite(Hf).all()) or \
                not bool(torch.isfinite(gf).all()):
            break  # nothing to minimise, or a non-finite system: poses stay as they are
        scale = float(torch.diagonal(Hf).sum()) / (6 * nf)
        accepted = False
        for _try in range(6):
            A = Hf + (lam * scale) * torch.eye(6 * nf, dtype=dt, device=dev)
            # a damping below the dtype's rounding leaves a rank-deficient H (one
            # matched point, collinear matches) exactly singular: solve_ex reports it
            # instead of raising, and the step counts as rejected (more damping)
            sol, info = torch.linalg.solve_ex(A, gf)
            if int(info) != 0 or not bool(torch.isfinite(sol).all()):
                lam *= 10.0
                continue
            xi = -sol.reshape(nf, 6)
            # left increment about the centroid o: G <- Tr(o) exp(xi) Tr(-o) G
            E = se3_exp(xi)
            Rn = E[:, :3, :3]
            tn = E[:, :3, 3] + o - (Rn @ o[:, None])[..., 0]
            Gn = G.clone()
            Gn[idx, :3, :3] = Rn @ G[idx, :3, :3]
            Gn[idx, :3, 3] = (Rn @ G[idx, :3, 3, None])[..., 0] + tn
            _, energy_n, _, _ = evaluate(Gn, assoc)
            if bool(energy_n <= energy):
                G = Gn
                terms, energy, o, assoc = evaluate(G, None)
                lam = max(lam / 10.0, lam_min)
                accepted = True
                break
            lam *= 10.0
        if not accepted:
            break
    out = poses.clone()
    for i in free:
        out[i] = G[i].to(out_dtype)
    return out
