"""Pose from matches: descriptor matching, RANSAC + weighted Kabsch, global assembly.

The pieces of one object are not independent: their fracture surfaces are complementary.
With per-point descriptors that are invariant to each piece's pose (an SE(3)-equivariant
encoder gives them) points that touch across two pieces can be matched, and the relative
pose of the two pieces follows from the matched points by a robust rigid fit. This module
is pure geometry (no learning):

* :func:`match_pieces` — mutual nearest neighbours (MNN) or log-domain Sinkhorn optimal
  transport with a dustbin (SuperGlue style) over the cosine similarity of descriptors,
  weighted by fracture-surface scores.
* :func:`ransac_kabsch` — weighted Kabsch (:func:`geo3d.rotations.kabsch`) inside RANSAC
  with 3-point minimal samples, an MSAC score, and a refit on the inliers.
* :func:`pairwise_poses` — the above for every pair of pieces of one object.
* :func:`global_assembly` — maximum spanning tree over the pair graph from the anchor by
  inlier score, composing relative poses; pieces without a reliable edge fall back to a
  given pose (the network's).

Pose convention (as everywhere in :mod:`geo3d.apps.assembly`): a pose ``T`` (4x4) maps
a piece's *input* points ``p`` into a common frame, ``q = R p + t``. A relative pose
``rel[i, j]`` maps the input points of piece ``j`` into the input frame of piece ``i``
(``rel[i, j] = T_i⁻¹ T_j``).

Equivariance: every random draw (RANSAC's minimal samples) depends only on the match
weights, which are functions of the invariant descriptors and scores, and on the
generator, never on coordinates; every discrete choice (argmax, top-k, spanning tree)
breaks ties by index. So rotating or translating any input piece (its descriptors
unchanged) changes the relative poses only by that motion, exactly up to rounding.

References:
    Y. Lu, ..., "Jigsaw: Learning to Assemble Multiple Fractured Objects", NeurIPS 2023,
    arXiv:2305.17975 (fracture-surface segmentation + feature matching + pose graph).
    P.-E. Sarlin, D. DeTone, T. Malisiewicz, A. Rabinovich, "SuperGlue: Learning Feature
    Matching with Graph Neural Networks", CVPR 2020, arXiv:1911.11763 (Sinkhorn with a
    dustbin). M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal
    Transport", NeurIPS 2013, arXiv:1306.0895. M. A. Fischler, R. C. Bolles, "Random
    Sample Consensus", Comm. ACM 24(6), 1981, DOI 10.1145/358669.358692. P. H. S. Torr,
    A. Zisserman, "MLESAC", CVIU 78, 2000, DOI 10.1006/cviu.1999.0832 (the MSAC score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PairwiseResult",
    "global_assembly",
    "log_sinkhorn",
    "match_pieces",
    "pairwise_poses",
    "piece_scale",
    "ransac_kabsch",
]

MATCH_METHODS = ("sinkhorn", "mnn")
#: "auto" dustbin: mean + this many standard deviations of the similarities, at most this
#: fraction of the way from the mean to the median best similarity, at most _DUSTBIN_MAX
_DUSTBIN_STD = 3.0
_DUSTBIN_CAP = 0.5
_DUSTBIN_MAX = 0.5


# ----------------------------------------------------------------------------- checks
def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_float(name: str, x: object, ndim: int, last: int | None, what: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != ndim or (
            last is not None and x.shape[-1] != last):
        got = _shape(x) if isinstance(x, Tensor) and x.is_floating_point() else (
            f"{x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__)
        raise ValueError(f"{name}: expected a floating-point tensor of shape {what}, got {got}")
    return x


def _check_weights(name: str, w: object, n: int, like: Tensor,
                   upper: float | None = None) -> Tensor:
    if w is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    if not isinstance(w, Tensor) or not w.is_floating_point() or w.shape != (n,):
        raise ValueError(f"{name}: expected a floating-point tensor of shape ({n},), got "
                         f"{_shape(w)}")
    if w.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device}, got {w.device}")
    w = w.to(like.dtype)
    if n and not bool(torch.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(f"{name}: expected finite non-negative values, got min "
                         f"{float(w.min())}")
    if n and upper is not None and not bool((w <= upper).all()):
        raise ValueError(f"{name}: expected values in [0, {upper:g}] (probabilities), got "
                         f"max {float(w.max())}")
    return w


def _check_kwargs(name: str, kwargs: object, fn: Any,
                  exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``kwargs`` as a dict whose keys are keyword-only parameters of ``fn`` not in
    ``exclude`` (one-line ``ValueError`` naming ``name`` otherwise: an unknown key would be
    a TypeError deep in the pipeline)."""
    import inspect

    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{name}: expected a dict of keyword arguments, got "
                         f"{type(kwargs).__name__}")
    params = inspect.signature(fn).parameters
    allowed = sorted(k for k, p in params.items()
                     if p.kind == p.KEYWORD_ONLY and k not in exclude)
    unknown = sorted(str(k) for k in kwargs if k not in allowed)
    if unknown:
        raise ValueError(f"{name}: expected keys among {allowed} (of {fn.__name__}), got "
                         f"unknown {unknown}")
    return dict(kwargs)


def _homogeneous(R: Tensor, t: Tensor) -> Tensor:
    T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def _inverse(T: Tensor) -> Tensor:
    R, t = T[..., :3, :3], T[..., :3, 3]
    Rt = R.transpose(-1, -2)
    return _homogeneous(Rt, -(Rt @ t[..., None])[..., 0])


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def piece_scale(points: Tensor) -> Tensor:
    """RMS distance of a piece's points to their centroid (invariant to the piece's pose).

    Args:
        points: shape :math:`(*, N, 3)`.

    Returns:
        Scale, shape :math:`(*)`, in the units of ``points``.

    Example:
        >>> float(piece_scale(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])))
        1.0
    """
    c = points.mean(-2, keepdim=True)
    return ((points - c) ** 2).sum(-1).mean(-1).sqrt()


# ----------------------------------------------------------------------------- matching
def log_sinkhorn(log_k: Tensor, log_mu: Tensor, log_nu: Tensor, iters: int = 100,
                 tol: float | None = None) -> Tensor:
    """Entropic optimal transport in the log domain (Sinkhorn–Knopp iterations).

    Finds ``P = diag(u) K diag(v)`` with row sums ``mu`` and column sums ``nu`` (``K =
    exp(log_k)``), alternating ``log u = log mu - logsumexp(log_k + log v)`` and the same for
    ``v``. The last update is the column one, so columns match ``nu`` to rounding and rows
    match ``mu`` to the convergence of the iterations. ``mu`` and ``nu`` must carry the same
    total mass.

    Args:
        log_k: log kernel (scores / temperature), shape :math:`(*, M, N)`.
        log_mu: log row marginals, shape :math:`(*, M)` (``-inf`` allowed: empty rows).
        log_nu: log column marginals, shape :math:`(*, N)`.
        iters: largest number of row+column updates, >= 1.
        tol: stop early (checked every 10 iterations) once every row sum is within
            ``tol`` times the largest row marginal of it (``None``: run ``iters``).

    Returns:
        ``log P``, shape :math:`(*, M, N)`.

    Raises:
        ValueError: bad shapes or ``iters``.

    Reference:
        M. Cuturi, "Sinkhorn Distances", NeurIPS 2013, arXiv:1306.0895; SuperGlue
        (arXiv:1911.11763), ``log_optimal_transport``.

    Example:
        >>> import math
        >>> lp = log_sinkhorn(torch.zeros(2, 3), torch.log(torch.tensor([0.5, 0.5])),
        ...                   torch.full((3,), math.log(1 / 3)))
        >>> lp.exp().sum(0)
        tensor([0.3333, 0.3333, 0.3333])
    """
    _check_float("log_k", log_k, log_k.dim() if isinstance(log_k, Tensor) else 2, None,
                 "(*, M, N)")
    if log_k.dim() < 2:
        raise ValueError(f"log_k: expected shape (*, M, N), got {tuple(log_k.shape)}")
    if not isinstance(log_mu, Tensor) or log_mu.shape != log_k.shape[:-1]:
        raise ValueError(f"log_mu: expected shape {tuple(log_k.shape[:-1])}, got "
                         f"{_shape(log_mu)}")
    if not isinstance(log_nu, Tensor) or \
            log_nu.shape != log_k.shape[:-2] + log_k.shape[-1:]:
        raise ValueError(f"log_nu: expected shape "
                         f"{tuple(log_k.shape[:-2] + log_k.shape[-1:])}, got {_shape(log_nu)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: expected an int >= 1, got {iters!r}")
    u = torch.zeros_like(log_mu)
    v = torch.zeros_like(log_nu)
    mu = log_mu.exp() if tol is not None else None
    for it in range(iters):
        u = log_mu - torch.logsumexp(log_k + v[..., None, :], dim=-1)
        v = log_nu - torch.logsumexp(log_k + u[..., :, None], dim=-2)
        if mu is not None and it % 10 == 9:
            rows = torch.logsumexp(log_k + u[..., :, None] + v[..., None, :], dim=-1).exp()
            if float((rows - mu).abs().max()) <= tol * float(mu.max()):
                break
    return log_k + u[..., :, None] + v[..., None, :]


def match_pieces(
    desc_a: Tensor,
    desc_b: Tensor,
    score_a: Tensor | None = None,
    score_b: Tensor | None = None,
    method: str = "sinkhorn",
    *,
    temperature: float = 0.02,
    dustbin: float | str = "auto",
    iters: int = 100,
    tol: float | None = 1e-3,
    min_weight: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Match the points of two pieces by their descriptors.

    Similarity is the cosine ``s_ij = <a_i, b_j> / (|a_i| |b_j|)``.

    * ``"mnn"``: mutual nearest neighbours (``j = argmax_j s_ij`` and ``i = argmax_i
      s_ij``, ties to the lower index); weight ``max(s_ij, 0) sqrt(score_a_i score_b_j)``.
    * ``"sinkhorn"``: entropic optimal transport (:func:`log_sinkhorn`) on ``s /
      temperature`` augmented with a dustbin row and column of score ``dustbin /
      temperature`` (SuperGlue), with marginals proportional to the fracture scores:
      row ``i`` carries ``score_a_i``, the dustbin row ``Σ score_b``, column ``j``
      ``score_b_j``, the dustbin column ``Σ score_a`` (uniform scores give SuperGlue's
      marginals). Matches are the mutual argmaxes of the plan outside the dustbins;
      weight = ``P_ij / max(mu_i, nu_j)`` (the share of the larger mass sent along the
      edge, in [0, 1]) times ``sqrt(score_a_i score_b_j)``.

    Matches with weight below ``min_weight`` are dropped.

    Args:
        desc_a: descriptors of piece a, shape :math:`(N_a, C)` (pose-invariant).
        desc_b: descriptors of piece b, shape :math:`(N_b, C)`.
        score_a: fracture-surface probabilities in [0, 1] of a's points, shape
            :math:`(N_a,)` (``None``: all 1).
        score_b: the same for b, shape :math:`(N_b,)`.
        method: ``"sinkhorn"`` or ``"mnn"``.
        temperature: softmax temperature of the cosine similarity (sinkhorn).
        dustbin: similarity below which a point prefers to stay unmatched (sinkhorn), or
            ``"auto"`` (default): the smallest of 0.5, the mean plus three standard
            deviations of all ``N_a N_b`` similarities (the background of non-matching
            pairs: true matches are a small fraction), and the point half-way from that
            mean to the median over rows of the best similarity. The scale of a learned
            head's similarities is not known in advance: with oracle descriptors plus
            noise of twice the signal's RMS, true pairs have cosines ~0.2-0.4 and a fixed
            0.5 swallows every match (benchmarks/assembly_matching.py); with few channels
            the background spread alone can exceed 1; with similarities compressed
            near 1 (an untrained head) any dustbin at or above the background mean
            swallows every match, hence the fixed 0.5 ceiling.
        iters: largest number of Sinkhorn iterations.
        tol: early stop of the iterations (see :func:`log_sinkhorn`).
        min_weight: smallest weight kept.

    Returns:
        ``(idx_a (M,), idx_b (M,), weights (M,))``: long indices into a and b, ordered by
        ``idx_a``, and weights in [0, 1] (dtype of ``desc_a``).

    Raises:
        ValueError: bad shapes/dtypes, scores outside [0, 1] or non-finite, an unknown
            ``method``, a non-positive ``temperature`` or an unknown ``dustbin`` string.

    Reference:
        P.-E. Sarlin et al., "SuperGlue", CVPR 2020, arXiv:1911.11763 (optimal transport
        with a dustbin, mutual-argmax extraction); Y. Lu et al., "Jigsaw", NeurIPS 2023,
        arXiv:2305.17975 (matching fracture-surface points across pieces).

    Example:
        >>> d = torch.eye(4)
        >>> ia, ib, w = match_pieces(d, d.flip(0), method="mnn")
        >>> ia.tolist(), ib.tolist()
        ([0, 1, 2, 3], [3, 2, 1, 0])
    """
    _check_float("desc_a", desc_a, 2, None, "(N_a, C)")
    _check_float("desc_b", desc_b, 2, desc_a.shape[-1], f"(N_b, {desc_a.shape[-1]})")
    if desc_b.device != desc_a.device:
        raise ValueError(f"desc_b: expected a tensor on {desc_a.device}, got {desc_b.device}")
    if method not in MATCH_METHODS:
        raise ValueError(f"method: expected one of {MATCH_METHODS}, got {method!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if isinstance(dustbin, str) and dustbin != "auto":
        raise ValueError(f"dustbin: expected a number or 'auto', got {dustbin!r}")
    na, nb = desc_a.shape[0], desc_b.shape[0]
    desc_b = desc_b.to(desc_a.dtype)
    sa = _check_weights("score_a", score_a, na, desc_a, upper=1.0)
    sb = _check_weights("score_b", score_b, nb, desc_a, upper=1.0)
    empty = torch.zeros(0, dtype=torch.long, device=desc_a.device)
    if na == 0 or nb == 0:
        return empty, empty.clone(), torch.zeros(0, dtype=desc_a.dtype, device=desc_a.device)
    a = torch.nn.functional.normalize(desc_a, dim=-1)
    b = torch.nn.functional.normalize(desc_b, dim=-1)
    sim = a @ b.T  # (Na, Nb)
    if method == "mnn":
        j_of_i = sim.argmax(1)
        i_of_j = sim.argmax(0)
        ia = torch.arange(na, device=sim.device)
        keep = i_of_j[j_of_i] == ia
        ia, ib = ia[keep], j_of_i[keep]
        w = sim[ia, ib].clamp_min(0) * (sa[ia] * sb[ib]).sqrt()
    else:
        tiny = torch.finfo(sim.dtype).tiny
        if isinstance(dustbin, str):  # "auto", see the docstring
            m = sim.mean()
            best = sim.max(1).values.median()
            db = min(float(m + _DUSTBIN_STD * sim.std(unbiased=False)),
                     float(m + _DUSTBIN_CAP * (best - m)), _DUSTBIN_MAX)
        else:
            db = float(dustbin)
        log_k = torch.full((na + 1, nb + 1), db / temperature, dtype=sim.dtype,
                           device=sim.device)
        log_k[:na, :nb] = sim / temperature
        mu = torch.cat([sa, sb.sum()[None]])
        nu = torch.cat([sb, sa.sum()[None]])
        tot = mu.sum()
        if float(tot) <= 0:
            return empty, empty.clone(), torch.zeros(0, dtype=sim.dtype, device=sim.device)
        mu, nu = mu / tot, nu / tot
        lp = log_sinkhorn(log_k, mu.clamp_min(tiny).log(), nu.clamp_min(tiny).log(), iters,
                          tol)
        plan = lp.exp()
        j_of_i = plan[:na].argmax(1)  # over the nb + 1 columns (dustbin last)
        i_of_j = plan[:, :nb].argmax(0)  # over the na + 1 rows
        ia = torch.arange(na, device=sim.device)
        keep = (j_of_i < nb)
        keep = keep & (i_of_j[j_of_i.clamp_max(nb - 1)] == ia)
        ia, ib = ia[keep], j_of_i[keep]
        share = plan[ia, ib] / torch.maximum(mu[ia], nu[ib]).clamp_min(tiny)
        w = share.clamp(0, 1) * (sa[ia] * sb[ib]).sqrt()
    keep = w >= min_weight
    return ia[keep], ib[keep], w[keep]


# ----------------------------------------------------------------------------- RANSAC
def _msac(res2: Tensor, w: Tensor, thresh2: float) -> Tensor:
    """MSAC score ``Σ w max(0, 1 - r²/τ²)`` (higher is better) of residuals (H, M)."""
    return (w * (1.0 - res2 / thresh2).clamp_min(0)).sum(-1)


def _ransac(
    x: Tensor, y: Tensor, w: Tensor, iters: int, thresh: float, refits: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RANSAC core: (R, t, inlier_score, inlier mask)."""
    from geo3d.rotations import kabsch

    m = x.shape[0]
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    zero = torch.zeros(3, dtype=x.dtype, device=x.device)
    pos = w > 0
    if int(pos.sum()) < 3:
        return eye, zero, x.new_zeros(()), torch.zeros(m, dtype=torch.bool, device=x.device)
    # minimal samples: 3 distinct matches drawn with probability ∝ weight. The draw depends
    # only on w and the generator (never on coordinates): equivariance holds exactly.
    gen_dev = generator.device if generator is not None else x.device
    probs = w.detach().to(gen_dev, torch.float64).expand(iters, m)
    idx = torch.multinomial(probs, 3, replacement=False, generator=generator).to(x.device)
    R, t = kabsch(x[idx], y[idx])  # (H, 3, 3), (H, 3)
    thresh2 = float(thresh) ** 2
    res2 = ((x @ R.transpose(-1, -2) + t[:, None] - y) ** 2).sum(-1)  # (H, M)
    score = _msac(res2, w, thresh2)
    best = int(score.argmax())  # ties: the first (lowest draw) hypothesis
    R, t = R[best], t[best]
    inl = res2[best] < thresh2
    for _ in range(refits):  # least squares on the inliers, then re-select the inliers
        if int((inl & pos).sum()) < 3:
            break
        R, t = kabsch(x[inl], y[inl], w[inl])
        r2 = ((x @ R.T + t - y) ** 2).sum(-1)
        new = r2 < thresh2
        if bool((new == inl).all()):
            break
        inl = new
    r2 = ((x @ R.T + t - y) ** 2).sum(-1)
    inl = r2 < thresh2
    return R, t, (w * inl).sum(), inl


def _degenerate(x: Tensor, return_inliers: bool) -> tuple[Tensor, ...]:
    """ransac_kabsch's answer without a fit: identity, score 0, no inliers."""
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    out = (eye, x.new_zeros(3), x.new_zeros(()))
    return out + (torch.zeros(x.shape[0], dtype=torch.bool, device=x.device),) \
        if return_inliers else out


def ransac_kabsch(
    x: Tensor,
    y: Tensor,
    weights: Tensor | None = None,
    iters: int = 256,
    inlier_thresh: float | None = None,
    *,
    rel_thresh: float = 0.1,
    refits: int = 5,
    generator: torch.Generator | None = None,
    return_inliers: bool = False,
) -> tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """Robust rigid fit ``y ≈ R x + t`` from putative matches: RANSAC + weighted Kabsch.

    ``iters`` minimal samples of 3 distinct matches are drawn at once (probability ∝
    weight, through ``generator``); each gives a Kabsch fit; the hypothesis with the best
    MSAC score ``Σ w max(0, 1 - r²/τ²)`` wins (ties: the first drawn); then up to
    ``refits`` rounds of weighted Kabsch on the inliers (``r < τ``) and re-selection.
    Degenerate (collinear) samples give a valid rotation with a poor score.

    Args:
        x: source points, shape :math:`(M, 3)`.
        y: target points, shape :math:`(M, 3)`, ``y[k]`` matched to ``x[k]``.
        weights: non-negative match weights, shape :math:`(M,)` (``None``: all 1).
        iters: number of minimal samples, >= 1.
        inlier_thresh: inlier distance ``τ`` (units of the points); ``None``:
            ``rel_thresh`` times the larger RMS radius (:func:`piece_scale`) of ``x`` and
            ``y`` (pose-invariant).
        rel_thresh: see ``inlier_thresh``.
        refits: inlier refit rounds.
        generator: optional :class:`torch.Generator` for the samples.
        return_inliers: also return the inlier mask :math:`(M,)`.

    Returns:
        ``(R (3, 3), t (3,), inlier_score ())``: ``inlier_score`` is the sum of the
        weights of the final inliers (0 and the identity when fewer than 3 matches have
        positive weight, or when ``inlier_thresh`` is ``None`` and both point sets have zero
        extent: one point or all points identical). With ``return_inliers`` also the bool
        mask.

    Raises:
        ValueError: bad shapes/dtypes, negative or non-finite weights, non-finite points,
            bad ``iters``/thresholds.

    Reference:
        M. A. Fischler, R. C. Bolles, "Random Sample Consensus", Comm. ACM 24(6), 1981,
        DOI 10.1145/358669.358692; Torr & Zisserman 2000 (MSAC), DOI
        10.1006/cviu.1999.0832; W. Kabsch 1976, DOI 10.1107/S0567739476001873.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(20, 3, generator=g, dtype=torch.float64)
        >>> R, t, s = ransac_kabsch(x, x + 1.0, generator=g)
        >>> torch.allclose(t, torch.ones(3, dtype=torch.float64)), float(s)
        (True, 20.0)
    """
    _check_float("x", x, 2, 3, "(M, 3)")
    _check_float("y", y, 2, 3, f"({x.shape[0]}, 3)")
    if y.shape != x.shape:
        raise ValueError(f"y: expected shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"y: expected a tensor on {x.device}, got {y.device}")
    y = y.to(x.dtype)
    w = _check_weights("weights", weights, x.shape[0], x)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters: expected an int >= 1, got {iters!r}")
    if not isinstance(refits, int) or refits < 0:
        raise ValueError(f"refits: expected an int >= 0, got {refits!r}")
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x, y: expected finite coordinates, got NaN or inf")
    if inlier_thresh is None:
        if not (isinstance(rel_thresh, (int, float)) and rel_thresh > 0):
            raise ValueError(f"rel_thresh: expected a number > 0, got {rel_thresh!r}")
        if x.shape[0] == 0:
            inlier_thresh = 1.0
        else:
            inlier_thresh = float(rel_thresh) * float(torch.maximum(piece_scale(x),
                                                                    piece_scale(y)))
            if not inlier_thresh > 0:  # x and y each one point (or all identical): no scale,
                return _degenerate(x, return_inliers)  # no rotation to fit
    if not (isinstance(inlier_thresh, (int, float)) and math.isfinite(inlier_thresh)
            and inlier_thresh > 0):
        raise ValueError(f"inlier_thresh: expected a finite number > 0, got {inlier_thresh!r}")
    R, t, score, inl = _ransac(x, y, w, iters, float(inlier_thresh), refits, generator)
    return (R, t, score, inl) if return_inliers else (R, t, score)


# ----------------------------------------------------------------------------- pairs
@dataclass
class PairwiseResult:
    """Relative poses between the pieces of one object.

    Attributes:
        rel: ``(P, P, 4, 4)``: ``rel[i, j]`` maps the input points of piece ``j`` into the
            input frame of piece ``i`` (``rel[j, i] = rel[i, j]⁻¹``; identity on the diagonal
            and for pairs never fitted, e.g. two pieces of zero extent).
        score: ``(P, P)`` symmetric inlier scores (sum of inlier match weights; 0 on the
            diagonal, for invalid pieces and pairs without matches).
        matches: ``{(i, j): (idx_i (M,), idx_j (M,), w (M,))}`` for ``i < j``: the RANSAC
            inliers, indices into the pieces' points.
        thresh: ``(P, P)`` inlier thresholds used (units of the points).
    """

    rel: Tensor
    score: Tensor
    matches: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    thresh: Tensor | None = None


def _candidates(score: Tensor, max_points: int, score_min: float, min_points: int) -> Tensor:
    """Indices of a piece's candidate fracture points: those with ``score >= score_min``,
    at most ``max_points`` of the highest scores, at least ``min_points`` (highest first;
    ties to the lower index), returned in increasing index order."""
    n = score.shape[0]
    order = torch.sort(-score, stable=True).indices  # descending, ties by index
    k = int((score >= score_min).sum())
    k = max(min(k, max_points), min(min_points, n))
    return torch.sort(order[:k]).values


def pairwise_poses(
    points: Tensor,
    desc: Tensor,
    score: Tensor | None = None,
    valid: Tensor | None = None,
    *,
    method: str = "sinkhorn",
    max_points: int = 256,
    score_min: float = 0.5,
    min_points: int = 32,
    rel_thresh: float = 0.1,
    iters: int = 256,
    generator: torch.Generator | None = None,
    timings: dict[str, float] | None = None,
    **match_kwargs: float,
) -> PairwiseResult:
    """Relative poses of all pairs of pieces of one object from descriptor matches.

    For every pair ``i < j`` of valid pieces: candidate points of each piece (fracture
    score ``>= score_min``, at most ``max_points``, at least ``min_points`` of the highest
    scores), :func:`match_pieces` between them, then :func:`ransac_kabsch` mapping piece
    ``j``'s matched points onto piece ``i``'s with inlier threshold ``rel_thresh`` times the
    larger :func:`piece_scale` of the two pieces. Pairs are visited in the order
    ``(0, 1), (0, 2), ..., (1, 2), ...``; ``generator`` is used in that order.

    Args:
        points: input points of the pieces, shape :math:`(P, N, 3)` (each piece in its own
            frame).
        desc: pose-invariant descriptors, shape :math:`(P, N, C)`.
        score: fracture-surface probabilities in [0, 1], shape :math:`(P, N)` (``None``:
            all 1).
        valid: valid pieces, shape :math:`(P,)` bool (``None``: all).
        method, **match_kwargs: see :func:`match_pieces`.
        max_points, score_min, min_points: candidate selection (see above).
        rel_thresh: inlier threshold relative to the piece scale.
        iters: RANSAC samples per pair.
        generator: optional :class:`torch.Generator` (RANSAC).
        timings: optional dict; wall seconds of matching and RANSAC are added to its
            ``"match"`` and ``"ransac"`` entries.

    Returns:
        :class:`PairwiseResult`.

    Raises:
        ValueError: bad shapes or arguments.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pts = torch.randn(2, 64, 3, generator=g, dtype=torch.float64)
        >>> pts[1] = pts[0] + 1.0  # the same piece, shifted
        >>> d = torch.randn(64, 16, generator=g, dtype=torch.float64).expand(2, 64, 16)
        >>> res = pairwise_poses(pts, d, method="mnn", generator=g)
        >>> torch.allclose(res.rel[0, 1, :3, 3], -torch.ones(3, dtype=torch.float64))
        True
    """
    _check_float("points", points, 3, 3, "(P, N, 3)")
    P, N = points.shape[:2]
    _check_float("desc", desc, 3, None, f"({P}, {N}, C)")
    if desc.shape[:2] != (P, N):
        raise ValueError(f"desc: expected shape ({P}, {N}, C), got {tuple(desc.shape)}")
    if score is None:
        score = torch.ones(P, N, dtype=points.dtype, device=points.device)
    if not isinstance(score, Tensor) or score.shape != (P, N) or not score.is_floating_point():
        raise ValueError(f"score: expected a floating-point tensor of shape ({P}, {N}), got "
                         f"{_shape(score)}")
    if valid is None:
        valid = torch.ones(P, dtype=torch.bool, device=points.device)
    if not isinstance(valid, Tensor) or valid.shape != (P,):
        raise ValueError(f"valid: expected a bool tensor of shape ({P},), got {_shape(valid)}")
    for name, v in (("max_points", max_points), ("min_points", min_points)):
        if not isinstance(v, int) or v < 3:
            raise ValueError(f"{name}: expected an int >= 3, got {v!r}")
    if score.numel() and not bool(torch.isfinite(score).all() and (score >= 0).all()
                                  and (score <= 1).all()):
        raise ValueError(f"score: expected probabilities in [0, 1], got values in "
                         f"[{float(score.min())}, {float(score.max())}]")
    _check_kwargs("match_kwargs", match_kwargs, match_pieces)
    if not (isinstance(rel_thresh, (int, float)) and math.isfinite(rel_thresh) and
            rel_thresh > 0):
        raise ValueError(f"rel_thresh: expected a finite number > 0, got {rel_thresh!r}")
    score = score.to(points.dtype)
    valid_l = valid.bool().tolist()
    dt, dev = points.dtype, points.device
    rel = torch.eye(4, dtype=dt, device=dev).repeat(P, P, 1, 1)
    scores = torch.zeros(P, P, dtype=dt, device=dev)
    thresh = torch.zeros(P, P, dtype=dt, device=dev)
    matches: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}
    cand = [_candidates(score[i], max_points, score_min, min_points) if valid_l[i] else None
            for i in range(P)]
    scale = piece_scale(points)
    for i in range(P):
        for j in range(i + 1, P):
            if not (valid_l[i] and valid_l[j]):
                continue
            tau = float(rel_thresh) * float(torch.maximum(scale[i], scale[j]))
            thresh[i, j] = thresh[j, i] = tau
            if not tau > 0:  # both pieces have zero extent: no pose to fit, pair stays unfitted
                continue
            ci, cj = cand[i], cand[j]
            t0 = _clock(dev)
            ia, ib, w = match_pieces(desc[i, ci], desc[j, cj], score[i, ci], score[j, cj],
                                     method, **match_kwargs)
            ia, ib = ci[ia], cj[ib]
            t1 = _clock(dev)
            R, t, s, inl = ransac_kabsch(points[j, ib], points[i, ia], w, iters, tau,
                                         generator=generator, return_inliers=True)
            T = _homogeneous(R, t)
            rel[i, j], rel[j, i] = T, _inverse(T)
            scores[i, j] = scores[j, i] = s
            matches[(i, j)] = (ia[inl], ib[inl], w[inl])
            if timings is not None:
                t2 = _clock(dev)
                timings["match"] = timings.get("match", 0.0) + (t1 - t0)
                timings["ransac"] = timings.get("ransac", 0.0) + (t2 - t1)
    return PairwiseResult(rel, scores, matches, thresh)


# ----------------------------------------------------------------------------- graph
def global_assembly(
    pairwise: PairwiseResult | tuple[Tensor, Tensor],
    anchor: int,
    fallback_poses: Tensor | None = None,
    *,
    valid: Tensor | None = None,
    min_score: float = 6.0,
    return_parents: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Poses of all pieces from pairwise poses: maximum spanning tree from the anchor.

    Prim's algorithm from ``anchor`` over the edges with ``score >= min_score``: the
    reliable edge of largest score from a placed piece ``i`` to an unplaced one ``j``
    places ``j`` at ``T_j = T_i rel[i, j]`` (ties: lowest ``(i, j)``). When no reliable
    edge is left, the lowest-index unplaced valid piece is placed at its fallback pose
    (``fallback_poses[j]``, identity without one) and the tree grows on from it (so a
    group of pieces well matched among themselves but not to the anchor's group moves
    together). The anchor's pose is the identity: all poses map input points into the
    anchor's input frame.

    Args:
        pairwise: :class:`PairwiseResult` or a tuple ``(rel (P, P, 4, 4), score (P, P))``.
        anchor: index of the anchor piece.
        fallback_poses: poses relative to the anchor (input -> anchor input frame), shape
            :math:`(P, 4, 4)`, e.g. the network's ``T_anchor⁻¹ T_j``.
        valid: valid pieces, shape :math:`(P,)` bool (``None``: all); invalid pieces get
            the identity.
        min_score: smallest inlier score of a reliable edge.
        return_parents: also return ``parent (P,)`` long: the tree parent of every piece,
            ``-1`` for the anchor and invalid pieces, ``-2`` for fallback-placed ones.

    Returns:
        Poses :math:`(P, 4, 4)` (and ``parent`` with ``return_parents``).

    Raises:
        ValueError: bad shapes, non-finite ``rel``/``fallback_poses`` or NaN scores, an
            ``anchor`` out of range or invalid.

    Reference:
        R. C. Prim, "Shortest connection networks and some generalizations", Bell Syst.
        Tech. J. 36(6), 1957, DOI 10.1002/j.1538-7305.1957.tb01515.x; Jigsaw
        (arXiv:2305.17975) also builds its global assembly from pairwise matches.

    Example:
        >>> rel = torch.eye(4).repeat(3, 3, 1, 1)
        >>> rel[0, 2, :3, 3] = torch.tensor([1.0, 0, 0]); rel[2, 0, :3, 3] = -rel[0, 2, :3, 3]
        >>> score = torch.tensor([[0.0, 1, 9], [1, 0, 8], [9, 8, 0]])
        >>> T, parent = global_assembly((rel, score), 0, return_parents=True)
        >>> parent.tolist(), T[2, 0, 3].item()
        ([-1, 2, 0], 1.0)
    """
    if isinstance(pairwise, PairwiseResult):
        rel, score = pairwise.rel, pairwise.score
    elif isinstance(pairwise, tuple) and len(pairwise) == 2:
        rel, score = pairwise
    else:
        raise ValueError(f"pairwise: expected a PairwiseResult or (rel, score), got "
                         f"{type(pairwise).__name__}")
    _check_float("rel", rel, 4, 4, "(P, P, 4, 4)")
    P = rel.shape[0]
    if rel.shape != (P, P, 4, 4):
        raise ValueError(f"rel: expected shape (P, P, 4, 4), got {tuple(rel.shape)}")
    if not isinstance(score, Tensor) or score.shape != (P, P):
        raise ValueError(f"score: expected shape ({P}, {P}), got {_shape(score)}")
    if not bool(torch.isfinite(rel).all()):
        raise ValueError("pairwise: expected finite relative poses (rel), got NaN or inf")
    if bool(torch.isnan(score).any()):
        raise ValueError("pairwise: expected scores without NaN (score), got NaN")
    if valid is None:
        valid = torch.ones(P, dtype=torch.bool)
    if not isinstance(valid, Tensor) or valid.shape != (P,):
        raise ValueError(f"valid: expected a bool tensor of shape ({P},), got {_shape(valid)}")
    valid_l = valid.bool().tolist()
    if not isinstance(anchor, int) or not 0 <= anchor < P or not valid_l[anchor]:
        raise ValueError(f"anchor: expected the index of a valid piece in [0, {P}), got "
                         f"{anchor!r}")
    if fallback_poses is not None:
        _check_float("fallback_poses", fallback_poses, 3, 4, f"({P}, 4, 4)")
        if fallback_poses.shape != (P, 4, 4):
            raise ValueError(f"fallback_poses: expected shape ({P}, 4, 4), got "
                             f"{tuple(fallback_poses.shape)}")
        if not bool(torch.isfinite(fallback_poses).all()):
            raise ValueError("fallback_poses: expected finite poses, got NaN or inf")
        fallback_poses = fallback_poses.to(device=rel.device, dtype=rel.dtype)
    eye = torch.eye(4, dtype=rel.dtype, device=rel.device)
    poses = eye.repeat(P, 1, 1)
    parent = [-1] * P
    placed = [False] * P
    placed[anchor] = True
    s = score.detach().to("cpu", torch.float64).tolist()
    todo = sum(valid_l) - 1
    while todo > 0:
        best, bi, bj = -math.inf, -1, -1
        for i in range(P):
            if not placed[i]:
                continue
            for j in range(P):
                if placed[j] or not valid_l[j] or s[i][j] < min_score:
                    continue
                if s[i][j] > best:
                    best, bi, bj = s[i][j], i, j
        if bj >= 0:
            poses[bj] = poses[bi] @ rel[bi, bj]
            parent[bj] = bi
            placed[bj] = True
        else:
            j = next(k for k in range(P) if valid_l[k] and not placed[k])
            poses[j] = fallback_poses[j] if fallback_poses is not None else eye
            parent[j] = -2
            placed[j] = True
        todo -= 1
    if return_parents:
        return poses, torch.tensor(parent, dtype=torch.long)
    return poses
