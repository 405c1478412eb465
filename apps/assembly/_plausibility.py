"""Physical plausibility of an assembly: contact and interpenetration of placed pieces,
a complementary-surface pairwise pose search, and hypothesis selection by score.

All quantities are relative geometry (distances between placed points, angles between
their normals), so a score is invariant to a rigid motion of the whole assembly, and the
searches work in the pieces' own principal-axis frames, so their results move with each
input piece (see :func:`pair_search`).

Score of two placed pieces ``A`` and ``B`` (points ``x``, ``y``, outward unit normals):

* contact: the number of points of either piece whose nearest point on the other piece
  lies within ``contact_radius`` and has an opposite normal (``n_x · n_y < cos_opposite``):
  fracture faces that touch;
* penetration: the number of points of either piece that lie inside the other, i.e. whose
  nearest point ``x`` on the other piece lies within ``pen_radius`` with
  ``n_x · (y - x) < -pen_depth`` (signed distance by the nearest neighbour's oriented
  normal, the point-to-plane approximation of the other piece's surface);
* ``score = contact - w_pen * penetration``, summed over pairs of pieces.

Reference: the scoring follows the physically based plausibility terms of
J. Huang et al., "Reassembling broken objects", SIGGRAPH 2006 (contact of complementary
fracture surfaces, no interpenetration), DOI 10.1145/1141911.1141925; the rotation grid is
M. Alexa, "Super-Fibonacci Spirals: Fast, Low-Discrepancy Sampling of SO(3)", CVPR 2022,
arXiv:2203.06436.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["rotation_grid", "spacing", "contact_penetration", "pair_search",
           "icp_contact", "assembly_score"]


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _real(name: str, v: object, *, lo: float | None = None, hi: float | None = None,
          strict: bool = False) -> float:
    """A finite real number (not a bool) within ``[lo, hi]`` (``(lo, ...`` if ``strict``)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if strict else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = ("" if lo is None else (f" > {lo}" if strict else f" >= {lo}")) + \
            ("" if hi is None else f" <= {hi}")
        raise ValueError(f"{name}: expected a finite number{rng}, got {v!r}")
    return float(v)


def _int(name: str, v: object, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return v


def _tensor(name: str, v: object, shape: tuple, dtype: torch.dtype | None = None,
            finite: bool = True) -> Tensor:
    """A floating-point tensor of ``shape`` (``None``: any size, ``...`` first: any leading
    dims), of ``dtype`` if given, with finite values."""
    ok = isinstance(v, Tensor) and v.is_floating_point()
    if ok:
        if shape and shape[0] is ...:
            tail = shape[1:]
            ok = v.dim() >= len(tail) and all(
                w is None or w == d
                for w, d in zip(tail, v.shape[v.dim() - len(tail):], strict=True))
        else:
            ok = v.dim() == len(shape) and all(w is None or w == d
                                               for w, d in zip(shape, v.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("*" if w is ... else ("N" if w is None else str(w))
                               for w in shape) + ")"
        raise ValueError(f"{name}: expected a floating-point tensor of shape {want}, "
                         f"got {_shape(v) if not isinstance(v, Tensor) else (tuple(v.shape), v.dtype)!r}")
    if dtype is not None and v.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (that of the points), got {v.dtype}")
    if finite and not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return v


def rotation_grid(n: int, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> Tensor:
    """``n`` well-spread rotations (super-Fibonacci spiral in the unit quaternions).

    Args:
        n: number of rotations, >= 1.

    Returns:
        Rotation matrices, shape :math:`(n, 3, 3)`.

    Raises:
        ValueError: ``n`` not a positive int.

    Example:
        >>> R = rotation_grid(4)
        >>> bool(torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand(4, 3, 3)))
        True
    """
    from geo3d.rotations import quat_to_matrix

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041
    s = torch.arange(n, dtype=torch.float64) + 0.5
    r, R = (s / n).sqrt(), (1.0 - s / n).sqrt()
    a, b = 2 * math.pi * s / phi, 2 * math.pi * s / psi
    q = torch.stack([r * a.sin(), r * a.cos(), R * b.sin(), R * b.cos()], -1)
    return quat_to_matrix(q, normalize=True).to(dtype=dtype, device=device)


def spacing(points: Tensor) -> Tensor:
    """Mean distance of a piece's points to their nearest other point (pose invariant).

    Duplicated points are skipped as neighbours (distance 0 is not a spacing).

    Args:
        points: shape :math:`(*, N, 3)`, ``N >= 1`` (a lone point has spacing 0).

    Returns:
        Shape :math:`(*)`.

    Raises:
        ValueError: ``points`` not a floating-point tensor :math:`(*, N, 3)` with
            ``N >= 1``, or with NaN/inf.

    Example:
        >>> round(float(spacing(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]))), 4)
        1.3333
    """
    _tensor("points", points, (..., None, 3))
    if points.shape[-2] < 1:
        raise ValueError(f"points: expected at least one point (N >= 1), got shape "
                         f"{tuple(points.shape)}")
    d = _cdist(points, points)  # exact: a duplicate is at distance 0, itself too
    d = torch.where(d > 0, d, torch.full_like(d, float("inf")))
    m = d.amin(-1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m.mean(-1)


def _cdist(y: Tensor, x: Tensor) -> Tensor:
    """Euclidean distances computed from differences (torch.cdist's default matrix-product
    form loses the small distances of points far from the origin: translating a piece
    would change them)."""
    return torch.cdist(y, x, compute_mode="donot_use_mm_for_euclid_dist")


def _nearest(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest point of ``x (*, Na, 3)`` for every ``y (*, Nb, 3)``: (distance, index)."""
    d = _cdist(y, x)
    dist, idx = d.min(-1)
    return dist, idx


def _one_side(y: Tensor, ny: Tensor, x: Tensor, nx: Tensor, contact_radius: float,
              pen_radius: float, cos_opposite: float, pen_depth: float
              ) -> tuple[Tensor, Tensor]:
    """Contact / penetration flags of the points ``y`` against the piece ``x``."""
    dist, idx = _nearest(y, x)
    xs = torch.gather(x.expand(y.shape[:-2] + x.shape[-2:]), -2,
                      idx[..., None].expand(*idx.shape, 3))
    ns = torch.gather(nx.expand(y.shape[:-2] + nx.shape[-2:]), -2,
                      idx[..., None].expand(*idx.shape, 3))
    opposite = (ns * ny).sum(-1) < cos_opposite
    contact = (dist <= contact_radius) & opposite
    signed = (ns * (y - xs)).sum(-1)
    inside = (dist <= pen_radius) & (signed < -pen_depth)
    return contact, inside


def contact_penetration(
    x: Tensor, nx: Tensor, y: Tensor, ny: Tensor, *, contact_radius: float,
    pen_radius: float, cos_opposite: float = -0.5, pen_depth: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Contact and penetration counts of two placed pieces (see the module docstring).

    Args:
        x, nx: points and outward unit normals of piece A, shape :math:`(*, N_a, 3)`.
        y, ny: the same for piece B, shape :math:`(*, N_b, 3)` (leading dims broadcast
            with A's: score many placements of B against one A).
        contact_radius: a point touches the other piece if its nearest point there is
            this close (units of the points) and has an opposite normal.
        pen_radius: a point can be inside the other piece only within this distance of
            its nearest point there.
        cos_opposite: normals are opposite when their dot product is below this.
        pen_depth: a point is inside when its signed distance is below ``-pen_depth``.

    Returns:
        ``(contact, penetration)``: counts over the points of both pieces, shape
        :math:`(*)` (float, dtype of the points).

    Raises:
        ValueError: bad shapes, mixed dtypes, no points, NaN/inf values, non-positive
            radii, ``cos_opposite`` outside [-1, 1] or a negative ``pen_depth``.

    Example:
        >>> x = torch.tensor([[0.0, 0, 0]]); nx = torch.tensor([[0.0, 0, 1]])
        >>> y = torch.tensor([[0.0, 0, 0.01]]); ny = torch.tensor([[0.0, 0, -1]])
        >>> [float(v) for v in contact_penetration(x, nx, y, ny, contact_radius=0.1,
        ...                                        pen_radius=0.1)]
        [2.0, 0.0]
    """
    _tensor("x", x, (..., None, 3))
    for name, v in (("nx", nx), ("y", y), ("ny", ny)):
        _tensor(name, v, (..., None, 3), x.dtype)
    if nx.shape != x.shape:
        raise ValueError(f"nx: expected shape {tuple(x.shape)}, got {tuple(nx.shape)}")
    if ny.shape != y.shape:
        raise ValueError(f"ny: expected shape {tuple(y.shape)}, got {tuple(ny.shape)}")
    for name, v in (("x", x), ("y", y)):
        if v.shape[-2] < 1:
            raise ValueError(f"{name}: expected at least one point, got shape {tuple(v.shape)}")
    try:
        torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    except RuntimeError:
        raise ValueError(f"y: expected leading dims that broadcast with x's "
                         f"{tuple(x.shape[:-2])}, got {tuple(y.shape[:-2])}") from None
    kw = dict(contact_radius=_real("contact_radius", contact_radius, lo=0, strict=True),
              pen_radius=_real("pen_radius", pen_radius, lo=0, strict=True),
              cos_opposite=_real("cos_opposite", cos_opposite, lo=-1, hi=1),
              pen_depth=_real("pen_depth", pen_depth, lo=0))
    cb, ib = _one_side(y, ny, x, nx, **kw)
    lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    ca, ia = _one_side(x.expand(*lead, *x.shape[-2:]), nx.expand(*lead, *nx.shape[-2:]),
                       y, ny, **kw)
    dt = x.dtype
    return (cb.to(dt).sum(-1) + ca.to(dt).sum(-1)), (ib.to(dt).sum(-1) + ia.to(dt).sum(-1))


def _transform(T: Tensor, x: Tensor) -> Tensor:
    return x @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def _rotate(T: Tensor, n: Tensor) -> Tensor:
    return n @ T[..., :3, :3].transpose(-1, -2)


def icp_contact(x: Tensor, nx: Tensor, y: Tensor, ny: Tensor, G: Tensor, *, radius: float,
                steps: int = 5, cos_opposite: float = -0.5, damping: float = 1e-3) -> Tensor:
    """Point-to-plane ICP of piece B onto piece A's surface over their contact pairs.

    Each step pairs every placed point of B with its nearest point of A if it lies within
    ``radius`` with an opposite normal, and solves the damped linearised point-to-plane
    problem ``min Σ (n_x · (R y + t - x))²`` for a small rigid update (rotation about the
    centroid of B's placed points, so the update does not depend on the frame). Placements
    without contact pairs are left unchanged.

    Args:
        x, nx: piece A (fixed), shape :math:`(N_a, 3)`.
        y, ny: piece B in its own frame, shape :math:`(N_b, 3)`.
        G: placements of B, shape :math:`(C, 4, 4)`.
        radius: pairing radius; steps: iterations; damping: relative to ``tr(H)/6``.

    Returns:
        Refined placements, shape :math:`(C, 4, 4)`.

    Raises:
        ValueError: bad shapes, mixed dtypes, NaN/inf values, a non-positive ``radius``
            or ``damping``, ``steps`` not an int >= 0, ``cos_opposite`` outside [-1, 1].

    Example:
        >>> x = torch.tensor([[i / 4, j / 4, 0.0] for i in range(5) for j in range(5)],
        ...                  dtype=torch.float64)
        >>> n = torch.tensor([0.0, 0, 1], dtype=torch.float64).expand(25, 3)
        >>> G = torch.eye(4, dtype=torch.float64)[None].clone(); G[0, 2, 3] = 0.05
        >>> out = icp_contact(x, n, x, -n, G, radius=0.2)  # B's face lies 0.05 above A's
        >>> round(float(out[0, 2, 3]), 9)
        0.0

    Reference: Y. Chen, G. Medioni, Image Vision Comput. 10(3), 1992,
    DOI 10.1016/0262-8856(92)90066-C.
    """
    from geo3d.rotations import se3_exp

    _tensor("x", x, (None, 3))
    _tensor("nx", nx, tuple(x.shape), x.dtype)
    _tensor("y", y, (None, 3), x.dtype)
    _tensor("ny", ny, tuple(y.shape), x.dtype)
    _tensor("G", G, (None, 4, 4), x.dtype)
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(f"x, y: expected at least one point each, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    radius = _real("radius", radius, lo=0, strict=True)
    steps = _int("steps", steps, 0)
    cos_opposite = _real("cos_opposite", cos_opposite, lo=-1, hi=1)
    damping = _real("damping", damping, lo=0, strict=True)
    G = G.clone()
    C = G.shape[0]
    eye6 = torch.eye(6, dtype=G.dtype, device=G.device)
    for _ in range(steps):
        q, nq = _transform(G, y), _rotate(G, ny)  # (C, Nb, 3)
        dist, idx = _nearest(q, x)
        xs, ns = x[idx], nx[idx]  # (C, Nb, 3)
        w = ((dist <= radius) & ((ns * nq).sum(-1) < cos_opposite)).to(G.dtype)
        o = (q * w[..., None]).sum(1) / w.sum(1).clamp_min(1.0)[:, None]  # (C, 3)
        r = (ns * (q - xs)).sum(-1)  # (C, Nb)
        J = torch.cat([ns, torch.linalg.cross(q - o[:, None], ns, dim=-1)], -1)  # (v, ω)
        H = (J * w[..., None]).transpose(-1, -2) @ J
        g = ((J * (w * r)[..., None])).sum(1)
        lam = damping * H.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12) / 6
        xi, info = torch.linalg.solve_ex(H + lam[:, None, None] * eye6, -g[..., None])
        xi = xi[..., 0]
        ok = (info == 0) & (w.sum(1) >= 6) & torch.isfinite(xi).all(-1)
        xi = torch.where(ok[:, None], xi, torch.zeros_like(xi))
        # the increment acts about o: T = Tr(o) exp(ξ) Tr(-o)
        E = se3_exp(xi)
        shift = torch.eye(4, dtype=G.dtype, device=G.device).repeat(C, 1, 1)
        shift[:, :3, 3] = o
        back = shift.clone()
        back[:, :3, 3] = -o
        G = shift @ E @ back @ G
    return G


def _canonical(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centroid, principal-axis frame (columns, rotates with the piece) and centred
    coordinates in that frame."""
    from geo3d.apps.assembly._model import pca_frame

    c = x.mean(0)
    E, _ = pca_frame((x - c)[None])
    E = E[0]
    return c, E, (x - c) @ E


def pair_search(
    xa: Tensor, na: Tensor, xb: Tensor, nb: Tensor, *, rotations: Tensor | int = 2048,
    extra: Tensor | None = None, cell: float | None = None, cos_vote: float = -0.9,
    per_rotation: int = 2, top: int = 64, icp_steps: int = 5,
    contact_radius: float | None = None, pen_radius: float | None = None,
    pen_depth: float | None = None, w_pen: float = 1.0, chunk: int = 256,
) -> tuple[Tensor, Tensor]:
    """Candidate relative poses of piece B against piece A by complementary surfaces.

    For each rotation of a grid (in the pieces' principal-axis frames, so the result
    rotates with either input piece), every pair of points with opposite normals
    (``n_a · R n_b < cos_vote``) votes for the translation that makes the two points
    coincide; votes are counted in cells of size ``cell`` (in A's principal frame).
    Touching complementary fracture faces make many such pairs agree. The ``top``
    (rotation, translation) cells with the most votes are refined by
    :func:`icp_contact` and scored by :func:`contact_penetration`.

    Args:
        xa, na: piece A's points and outward unit normals, shape :math:`(N_a, 3)`.
        xb, nb: piece B's, shape :math:`(N_b, 3)`.
        rotations: number of grid rotations (:func:`rotation_grid`) or the rotations
            themselves, shape :math:`(M, 3, 3)`, acting in the principal frames.
        extra: optional extra relative poses of B in A's input frame, shape
            :math:`(K, 4, 4)` (e.g. the network's hypotheses), refined and scored too.
        cell: vote cell size (default: ``1.5 ×`` the mean point spacing).
        per_rotation: best cells kept per rotation before the global ``top``.
        contact_radius, pen_radius: of the score (defaults ``1.5 ×`` / ``1.5 ×`` spacing).
        w_pen: weight of the penetration count in the score.

    Returns:
        ``(G, score)``: relative poses (B's input frame -> A's input frame), shape
        :math:`(C, 4, 4)`, best first, and their scores, shape :math:`(C,)`.

    Raises:
        ValueError: bad shapes, mixed dtypes, fewer than 2 points per piece, NaN/inf
            values, non-positive sizes (``cell``, radii), counts (``rotations``, ``top``,
            ``per_rotation``, ``chunk``) not ints >= 1, ``icp_steps`` not an int >= 0,
            ``cos_vote`` outside [-1, 1], a negative ``pen_depth`` or ``w_pen``.

    The principal frames (:func:`geo3d.apps.assembly._model.pca_frame`) rotate with a
    piece when its covariance eigenvalues are distinct and its third moments nonzero
    (generic fragments); for a symmetric piece (a cube) the candidates need not move with
    it. Measured on the demo checkpoint's held-out split
    (``benchmarks/results/assembly_pipeline_demo_ckpt.json``): at 128 points per piece
    wrong face-to-face placements of exterior surfaces out-score the true contact, so the
    search is off by default in :func:`select_hypotheses`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(40, 3, generator=g, dtype=torch.float64)
        >>> n = torch.nn.functional.normalize(x, dim=-1)
        >>> G, score = pair_search(x, n, x + 1.0, n, rotations=16, top=4, icp_steps=0)
        >>> G.shape, score.shape
        (torch.Size([4, 4, 4]), torch.Size([4]))
    """
    _tensor("xa", xa, (None, 3))
    _tensor("na", na, tuple(xa.shape), xa.dtype)
    _tensor("xb", xb, (None, 3), xa.dtype)
    _tensor("nb", nb, tuple(xb.shape), xa.dtype)
    for name, v in (("xa", xa), ("xb", xb)):
        if v.shape[0] < 2:
            raise ValueError(f"{name}: expected at least 2 points, got shape {tuple(v.shape)}")
    if isinstance(rotations, Tensor):
        _tensor("rotations", rotations, (None, 3, 3))
        if rotations.shape[0] < 1:
            raise ValueError("rotations: expected at least one rotation, got shape "
                             f"{tuple(rotations.shape)}")
    else:
        _int("rotations", rotations, 1)
    if extra is not None:
        _tensor("extra", extra, (None, 4, 4))
    for name, v in (("cell", cell), ("contact_radius", contact_radius),
                    ("pen_radius", pen_radius)):
        if v is not None:
            _real(name, v, lo=0, strict=True)
    if pen_depth is not None:
        _real("pen_depth", pen_depth, lo=0)
    cos_vote = _real("cos_vote", cos_vote, lo=-1, hi=1)
    per_rotation = _int("per_rotation", per_rotation, 1)
    top = _int("top", top, 1)
    icp_steps = _int("icp_steps", icp_steps, 0)
    w_pen = _real("w_pen", w_pen, lo=0)
    chunk = _int("chunk", chunk, 1)
    dt, dev = xa.dtype, xa.device
    h = 0.5 * float(spacing(xa) + spacing(xb))
    h = h if h > 0 else 1.0
    cell = 1.5 * h if cell is None else float(cell)
    rc = 1.5 * h if contact_radius is None else float(contact_radius)
    rp = 3.0 * h if pen_radius is None else float(pen_radius)
    pd = 0.5 * h if pen_depth is None else float(pen_depth)
    ca, Ea, A = _canonical(xa)
    cb, Eb, Bc = _canonical(xb)
    nA, nB = na @ Ea, nb @ Eb
    if isinstance(rotations, int):
        Rg = rotation_grid(rotations, dt, dev)
    else:
        Rg = rotations.to(dev, dt)
    cand_R, cand_t, cand_v = [], [], []
    for s in range(0, Rg.shape[0], chunk):
        R = Rg[s:s + chunk]  # (m, 3, 3)
        Bm = Bc @ R.transpose(-1, -2)  # (m, Nb, 3)
        nBm = nB @ R.transpose(-1, -2)
        ok = (nA[None, :, None] * nBm[:, None]).sum(-1) < cos_vote  # (m, Na, Nb)
        t = A[None, :, None] - Bm[:, None]  # (m, Na, Nb, 3)
        ri, ai, bi = ok.nonzero(as_tuple=True)
        if ri.numel() == 0:
            continue
        tv = t[ri, ai, bi]  # (V, 3)
        key = torch.floor(tv / cell).long()
        key = torch.cat([ri[:, None], key], 1)
        uniq, inv, cnt = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
        tsum = torch.zeros(uniq.shape[0], 3, dtype=dt, device=dev).index_add_(0, inv, tv)
        tmean = tsum / cnt[:, None].to(dt)
        # the best cells of every rotation (ties: lowest cell key first)
        rot_of = uniq[:, 0]
        cmax = int(cnt.max()) + 1
        order = torch.argsort(rot_of * cmax + (cmax - cnt), stable=True)
        rs = rot_of[order]
        rank = torch.arange(rs.shape[0], device=dev) - torch.searchsorted(rs, rs)
        keep_t = order[rank < per_rotation]
        cand_R.append(R[rot_of[keep_t]])
        cand_t.append(tmean[keep_t])
        cand_v.append(cnt[keep_t].to(dt))
    Gs = []
    if cand_R:
        Rc, tc, vc = torch.cat(cand_R), torch.cat(cand_t), torch.cat(cand_v)
        best = torch.argsort(vc, descending=True, stable=True)[:top]
        Rc, tc = Rc[best], tc[best]
        # back to input frames: y = Ea (R Ebᵀ (xb - cb) + t) + ca
        Rin = Ea @ Rc @ Eb.T
        tin = ca + tc @ Ea.T - (Rin @ cb)
        G = torch.eye(4, dtype=dt, device=dev).repeat(Rin.shape[0], 1, 1)
        G[:, :3, :3], G[:, :3, 3] = Rin, tin
        Gs.append(G)
    if extra is not None and extra.shape[0]:
        Gs.append(extra.to(dev, dt))
    if not Gs:
        return torch.eye(4, dtype=dt, device=dev)[None], torch.zeros(1, dtype=dt, device=dev)
    G = torch.cat(Gs)
    if icp_steps:
        G = icp_contact(xa, na, xb, nb, G, radius=rc, steps=icp_steps)
    con, pen = contact_penetration(xa, na, _transform(G, xb), _rotate(G, nb),
                                   contact_radius=rc, pen_radius=rp, pen_depth=pd)
    score = con - w_pen * pen
    if not (bool(torch.isfinite(G).all()) and bool(torch.isfinite(score).all())):
        raise RuntimeError("pair_search: non-finite poses or scores (overflow of the "
                           "coordinates?)")
    order = torch.argsort(score, descending=True, stable=True)
    return G[order], score[order]


def assembly_score(points: Tensor, normals: Tensor, poses: Tensor, valid: Tensor | None = None,
                   *, contact_radius: float, pen_radius: float, w_pen: float = 1.0,
                   cos_opposite: float = -0.5, pen_depth: float = 0.0) -> Tensor:
    """Plausibility score of whole assemblies: Σ over pairs of valid pieces of
    ``contact - w_pen · penetration`` (:func:`contact_penetration`).

    Args:
        points, normals: pieces in their input frames, shape :math:`(P, N, 3)`.
        poses: assemblies, shape :math:`(*, P, 4, 4)` (input -> assembled frame).
        valid: valid pieces, shape :math:`(P,)` bool (default: all).

    Returns:
        Scores, shape :math:`(*)`.

    Raises:
        ValueError: bad shapes (``valid`` not a bool tensor :math:`(P,)`), mixed dtypes,
            NaN/inf values, bad radii or weights (see :func:`contact_penetration`).

    Example:
        >>> pts = torch.tensor([[[0.0, 0, 0]], [[0.0, 0, 0.01]]])
        >>> nrm = torch.tensor([[[0.0, 0, 1]], [[0.0, 0, -1]]])
        >>> T = torch.eye(4).repeat(2, 1, 1)
        >>> float(assembly_score(pts, nrm, T, contact_radius=0.1, pen_radius=0.1))
        2.0
    """
    _tensor("points", points, (None, None, 3), finite=False)
    P = points.shape[0]
    _tensor("normals", normals, tuple(points.shape), points.dtype, finite=False)
    _tensor("poses", poses, (..., P, 4, 4), points.dtype, finite=False)
    if valid is not None and (not isinstance(valid, Tensor) or valid.dtype != torch.bool or
                              tuple(valid.shape) != (P,)):
        raise ValueError(f"valid: expected a bool tensor of shape ({P},), got "
                         f"{(tuple(valid.shape), valid.dtype) if isinstance(valid, Tensor) else _shape(valid)!r}")
    vm = torch.ones(P, dtype=torch.bool) if valid is None else valid.cpu()
    for name, v in (("points", points), ("normals", normals)):  # invalid pieces: ignored
        _tensor(name, v[vm.to(v.device)], (None,) + tuple(v.shape[1:]))
    _tensor("poses", poses[..., vm.to(poses.device), :, :], (..., 4, 4))
    w_pen = _real("w_pen", w_pen, lo=0)
    _real("contact_radius", contact_radius, lo=0, strict=True)
    _real("pen_radius", pen_radius, lo=0, strict=True)
    _real("cos_opposite", cos_opposite, lo=-1, hi=1)
    _real("pen_depth", pen_depth, lo=0)
    vl = [True] * P if valid is None else valid.tolist()
    q = _transform(poses, points)  # (*, P, N, 3)
    nq = _rotate(poses, normals)
    tot = q.new_zeros(poses.shape[:-3])
    for i in range(P):
        for j in range(i + 1, P):
            if not (vl[i] and vl[j]):
                continue
            c, p = contact_penetration(q[..., i, :, :], nq[..., i, :, :], q[..., j, :, :],
                                       nq[..., j, :, :], contact_radius=contact_radius,
                                       pen_radius=pen_radius, cos_opposite=cos_opposite,
                                       pen_depth=pen_depth)
            tot = tot + c - w_pen * p
    return tot


def select_hypotheses(
    points: Tensor, normals: Tensor, valid: Tensor, anchor: int, net_poses: Tensor,
    hyp_poses: Tensor | None = None, hyp_logits: Tensor | None = None, *, top_k: int = 5,
    w_net: float = 1.0, margin: float = 2.0, icp_steps: int = 3, search: int = 0,
    contact_radius: float | None = None, pen_radius: float | None = None,
    pen_depth: float | None = None, w_pen: float = 1.0,
) -> tuple[Tensor, dict]:
    """Pick each piece's pose among the network's hypotheses by physical plausibility.

    The anchor keeps its network pose. The other pieces are placed one by one, largest
    first: each of its ``top_k`` best-scored hypotheses (plus, with ``search > 0``, the
    best :func:`pair_search` poses against the anchor from a ``search``-rotation grid) is
    refined by :func:`icp_contact` against the pieces placed so far and scored by
    ``contact - w_pen · penetration`` against them plus ``w_net · (logit - max logit)``;
    the best one is kept. The resulting assembly replaces the network's only if its
    :func:`assembly_score` beats the network assembly's by more than ``margin`` (no move
    on weak evidence); otherwise the network's poses are returned unchanged.

    Everything is relative geometry in the network's assembled frame, so with an
    equivariant network the result is invariant to a rigid motion of any input piece.

    Args:
        points, normals: pieces in their input frames and outward unit normals, shape
            :math:`(P, N, 3)`.
        valid: shape :math:`(P,)` bool; anchor: index of the anchor piece.
        net_poses: the network's poses, shape :math:`(P, 4, 4)`.
        hyp_poses: the network's hypotheses, shape :math:`(P, K, 4, 4)`, and their
            ``hyp_logits`` :math:`(P, K)` (``None``: only ``net_poses`` and the search).
        top_k, w_net, margin, icp_steps, search, w_pen: see above; radii default to
            ``1.5 ×`` (contact), ``3 ×`` (penetration) and ``0.5 ×`` (depth) the mean
            point spacing (:func:`spacing`).

    Returns:
        ``(poses (P, 4, 4), info)`` with ``info["moved"]`` (bool: the network's poses were
        replaced), ``info["score"]``, ``info["net_score"]``, ``info["choice"]`` (per piece:
        hypothesis index, ``-1`` network pose/anchor/invalid, ``-2`` a search pose).

    Raises:
        ValueError: shapes that do not match ``points (P, N, 3)``, mixed dtypes, ``valid``
            not bool, an ``anchor`` that is not the int index of a valid piece, NaN/inf in
            the valid pieces' points, normals, network poses or hypotheses, counts
            (``top_k`` >= 1; ``icp_steps``, ``search`` >= 0) that are not ints, weights
            (``w_net``, ``w_pen``) or radii that are negative or not finite, a non-finite
            ``margin``.
        RuntimeError: a non-finite score (overflow).

    Example:
        >>> pts = torch.tensor([[[0.0, 0, 0]], [[0.0, 0, 0.01]]], dtype=torch.float64)
        >>> nrm = torch.tensor([[[0.0, 0, 1]], [[0.0, 0, -1]]], dtype=torch.float64)
        >>> net = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1); net[1, 0, 3] = 5.0
        >>> hyp = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1, 1)  # one hypothesis
        >>> T, info = select_hypotheses(pts, nrm, torch.ones(2, dtype=torch.bool), 0, net,
        ...                             hyp, torch.zeros(2, 1, dtype=torch.float64),
        ...                             contact_radius=0.1, margin=1.0, icp_steps=0)
        >>> info["moved"], float(T[1, 0, 3])
        (True, 0.0)
    """
    _tensor("points", points, (None, None, 3), finite=False)
    P, N = points.shape[:2]
    for name, v, shp in (("normals", normals, (P, N, 3)), ("valid", valid, (P,)),
                         ("net_poses", net_poses, (P, 4, 4))):
        if not isinstance(v, Tensor) or tuple(v.shape) != shp:
            raise ValueError(f"{name}: expected shape {shp}, got {_shape(v)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid: expected a bool tensor, got dtype {valid.dtype}")
    if not isinstance(anchor, int) or isinstance(anchor, bool) or not 0 <= anchor < P or \
            not bool(valid[anchor]):
        raise ValueError(f"anchor: expected the index of a valid piece in [0, {P}), got "
                         f"{anchor!r}")
    vmask = valid.to(points.device)
    _tensor("points", points[vmask], (None, N, 3))
    _tensor("normals", normals[vmask], (None, N, 3), points.dtype)
    if N < 1:
        raise ValueError(f"points: expected at least one point per piece, got shape "
                         f"{tuple(points.shape)}")
    _tensor("net_poses", net_poses[valid.to(net_poses.device)], (None, 4, 4))
    top_k = _int("top_k", top_k, 1)
    icp_steps = _int("icp_steps", icp_steps, 0)
    search = _int("search", search, 0)
    w_net = _real("w_net", w_net, lo=0)
    w_pen = _real("w_pen", w_pen, lo=0)
    margin = _real("margin", margin)
    for name, v in (("contact_radius", contact_radius), ("pen_radius", pen_radius)):
        if v is not None:
            _real(name, v, lo=0, strict=True)
    if pen_depth is not None:
        _real("pen_depth", pen_depth, lo=0)
    if hyp_poses is not None:
        K = hyp_poses.shape[1] if isinstance(hyp_poses, Tensor) and hyp_poses.dim() == 4 else -1
        if K < 1 or hyp_poses.shape != (P, K, 4, 4):
            raise ValueError(f"hyp_poses: expected shape ({P}, K, 4, 4), got "
                             f"{_shape(hyp_poses)}")
        if not isinstance(hyp_logits, Tensor) or hyp_logits.shape != (P, K):
            raise ValueError(f"hyp_logits: expected shape ({P}, {K}), got {_shape(hyp_logits)}")
        _tensor("hyp_poses", hyp_poses[valid.to(hyp_poses.device)], (None, K, 4, 4))
        _tensor("hyp_logits", hyp_logits[valid.to(hyp_logits.device)], (None, K))
    dt, dev = points.dtype, points.device
    vl = valid.bool().tolist()
    idx_valid = [i for i in range(P) if vl[i]]
    h = float(spacing(points[valid]).mean()) if idx_valid else 1.0
    h = h if h > 0 else 1.0
    rc = 1.5 * h if contact_radius is None else float(contact_radius)
    rp = 3.0 * h if pen_radius is None else float(pen_radius)
    pd = 0.5 * h if pen_depth is None else float(pen_depth)
    kw = dict(contact_radius=rc, pen_radius=rp, pen_depth=pd)
    net_poses = net_poses.to(dev, dt)
    from geo3d.apps.assembly._matching import piece_scale

    size = piece_scale(points).tolist()
    order = sorted((i for i in idx_valid if i != anchor), key=lambda i: (-size[i], i))
    poses = net_poses.clone()
    choice = [-1] * P
    placed = [anchor]
    for j in order:
        cands, tags, prior = [net_poses[j][None]], [-1], [0.0]
        if hyp_poses is not None and hyp_logits is not None:
            lg = hyp_logits[j].to(dev, dt)
            top = torch.argsort(lg, descending=True, stable=True)[:top_k]
            cands.append(hyp_poses[j, top].to(dev, dt))
            tags += top.tolist()
            prior += (lg[top] - lg.max()).tolist()
        if search > 0:
            a = anchor
            Gs, _ = pair_search(points[a], normals[a], points[j], normals[j],
                                rotations=search, icp_steps=0, **kw)
            Gs = Gs[:top_k]
            cands.append(poses[a][None] @ Gs)
            tags += [-2] * Gs.shape[0]
            prior += [0.0] * Gs.shape[0]
        C = torch.cat(cands)
        xs = torch.cat([_transform(poses[i], points[i]) for i in placed])
        ns = torch.cat([_rotate(poses[i], normals[i]) for i in placed])
        if icp_steps:
            C = icp_contact(xs, ns, points[j], normals[j], C, radius=rc, steps=icp_steps)
        con, pen = contact_penetration(xs, ns, _transform(C, points[j]),
                                       _rotate(C, normals[j]), **kw)
        sc = con - w_pen * pen + w_net * torch.tensor(prior, dtype=dt, device=dev)
        best = int(torch.argmax(sc))  # first maximum: ties keep the network's pose
        poses[j] = C[best]
        choice[j] = tags[best]
        placed.append(j)
    sel = assembly_score(points, normals, poses, valid, w_pen=w_pen, **kw)
    net = assembly_score(points, normals, net_poses, valid, w_pen=w_pen, **kw)
    if not (math.isfinite(float(sel)) and math.isfinite(float(net))):
        raise RuntimeError(f"select_hypotheses: non-finite score (selected {float(sel)}, "
                           f"network {float(net)})")
    moved = bool(sel > net + margin)
    info = {"moved": moved, "score": float(sel), "net_score": float(net),
            "choice": choice if moved else [-1] * P}
    return (poses if moved else net_poses.clone()), info
