"""The ArtEq network: equivariant point features -> parts -> per-part rotations and shape.

Pipeline (Feng et al., "Generalizing Neural Human Fitting to Unseen Poses With Articulated
SE(3) Equivariance", ICCV 2023, arXiv:2304.10528; reference code ``HavenFeng/ArtEq``):

1. centre the scan (translation), per-point features from a backbone;
2. invariant per-point features -> segmentation into the 22 ArtEq parts;
3. per-part soft pooling: the segmentation probabilities, L1-normalised over the points,
   weight the per-point features (ground-truth one-hot labels instead when given);
4. kinematic conditioning: each part's feature is concatenated with its parent's;
5. per part, a rotation readout -> the part's global rotation; local rotations
   ``R_parent^T R`` along the tree give SMPL's ``body_pose``;
6. attention over the 22 invariant part tokens -> ``betas``.

Parts and joints. ArtEq's 22 parts are SMPL's joints 0..21 (pelvis .. right wrist) with the
hands (SMPL 22, 23) merged into the wrists (20, 21) and the feet (10, 11) merged into the
ankles (7, 8) for labelling (:data:`geo3d.body.ARTEQ_PART_MAP`): parts 10 and 11 never
occur as labels but still get a rotation (from their soft-pooled / parent features). Part
``k`` predicts the global rotation of SMPL joint ``k``; its parent in the 22-part tree is
``SMPL_PARENTS[k]`` (:data:`ARTEQ_PARENTS`, all parents of joints 0..21 lie in 0..21).
``body_pose[:, j - 1]`` (SMPL joint ``j`` = 1..23) is ``R_parent(j)^T R_j`` for ``j <= 21``
and the identity for the hands ``j = 22, 23`` (not predicted, as in the reference).

Backbone choice. The reference uses EPN over the 60-element icosahedral group, built from
compiled CUDA kernels: equivariant only to those 60 rotations (and approximately between
them). Here the equivariant backbone is built from the Vector-Neuron layers of
:mod:`geo3d.nn` (pure torch, CPU and CUDA): exactly equivariant to every rotation of SO(3)
(in fact O(3)) by construction, with neighbourhoods that do not depend on how distance ties
are broken, so that the claim also holds on grid-like clouds and duplicated points (soft
kNN weights for ``"vn"``, geo3d.nn's tie-symmetric graphs for ``"vn_dgcnn"``).
``backbone="vn"`` (default) is :class:`~geo3d.apps.arteq._backbones.VNLocalEncoder`: local
and translation-invariant like the reference's EPN features (relative offsets only), so with
ground-truth part pooling in eval mode the rotation of a part far from a moved limb does
not change at all (tested); ``"vn_dgcnn"`` is :class:`geo3d.nn.VNDGCNN` (positions relative
to the centroid enter every feature, so every part sees every limb). The rotation readout
of a part uses only its own and its parent's pooled features (no cross-part attention, as
in the reference, whose attention runs over the 60 group elements of one part); only the
shape head attends across parts. The default rotation readout is exactly
equivariant too (an equivariant 3x3 matrix projected onto SO(3) by SVD with the det fix),
so the whole network is exactly SE(3)-equivariant for all rotations. The reference's readout
(attention over the 60 icosahedral elements, weighted chordal mean of the anchors) is
``rot_readout="chordal"``: exact for those 60 rotations only. Measured on the demo data
(``docs/arteq_experiments.md``, "The reference's readout", 22-min runs, seeds 0 and 1) it
is as accurate as ``"svd"`` in and out of distribution (V2V 9.9, 8.9 / 38.2, 37.2 cm in_dist
/ ood vs 10.3, 8.1 / 36.8, 38.2), lower on partial scans (24.8, 25.2 vs 27.8, 29.7; about
the spread between runs), with true parts a little better on ood (12.0, 12.4 vs
13.8, 13.0 cm), and off by 0.19-0.29 deg on average (3.3-10.4 deg at most) for rotations
between the elements; so the configs keep ``"svd"``.
The reference's backbone is here too: ``backbone="epn"``
(:class:`~geo3d.apps.arteq._backbones.EPNLocalEncoder`, the icosahedral group convolution in
pure torch; exactly equivariant for the 60 group elements only).
Measured on the demo data (``docs/arteq_experiments.md``, "The reference's backbone"):
with 22-44 min of CPU training it segments in_dist scans far worse than ``"vn_dgcnn"``
(part accuracy 0.43-0.48 vs 0.78; V2V 28-31 vs 12 cm) and ood scans no better (0.30-0.32
vs 0.26), and the segmentation probe agrees (0.59 / 0.32 vs 0.82 / 0.31 in_dist / ood).
The e3nn backbone ``"tfn"`` (local, like EPN) did not learn within such budgets either
(out-of-distribution experiments). So the configs use ``"vn_dgcnn"``.

Subsampling. As in the reference (EPN on a subsample, features carried to every point by
3-NN interpolation), the backbone runs on at most ``num_centers`` points of a large scan: a
pseudo-random subset chosen by the point set alone (points ranked by their distance to
the centroid, ranks drawn with a fixed seed: the same points for a rotated, moved or
reordered copy, so exact equivariance is kept and the output does not depend on the row
order, up to points at exactly equal distances (see "Symmetric inputs"); training draws
random subsets instead). Features reach
every input point by a Gaussian-weighted average over *all* centres,
``w_nm = softmax_m(-|x_n - c_m|^2 / (2 sigma^2))``: a smooth function of distances with no
neighbour cutoff, so there are no ties to break and the interpolation is exactly
equivariant (3-NN interpolation would switch neighbours on rounding at equidistant
centres). Measured on this project's shared 2-core CPU under heavy load (one thread,
batch 2, 5000 points, default widths; timings indicative only): a training step of the
VN-DGCNN variant on all points took ~15 s; with 1024 centres the default ``"vn"`` step
takes ~5-8 s, ``"pointnet"`` ~1 s, ``"dgcnn"`` ~5 s; one ``"vn"`` eval forward ~1 s.

Symmetric inputs. VN features are O(3)-equivariant: on an input symmetric under ``x -> -x``
(a full centred grid, a centred box) every vector feature is 0 and no rotation can be read
out; on any input with a rotational symmetry (a 2- or 3-fold axis: a grid missing a corner,
points on a sphere, a collinear input, one repeated point plus another) no equivariant
function can pick one rotation either, so ``part_rot``, ``global_orient`` and
``body_pose`` are O(1) wrong there and depend on rounding, the row order and the batch
(measured by an audit, all four backbones). Invariant outputs (``part_logits``,
``betas``) stay invariant on such inputs to rounding while batch norm has its initial
statistics; a trained net's VN batch norm (``x BN(|x|) / (|x| + 1e-6)``) scales the
rounding-size vectors of an ``x -> -x`` symmetric input by up to ``|BN(0)| / 1e-6``, so
there they move by up to ~1e-5. Bodies are never such inputs. The backbone's centres
(``num_centers``) are chosen by distance ranks; points at exactly equal distances from the
centroid (again only symmetric inputs) are ordered by row, so which of them are centres
can change with the row order or the frame.

``backbone="pointnet"`` / ``"dgcnn"`` are the non-equivariant baselines: the same
segmentation, pooling, kinematic conditioning and shape heads on plain features, with the
rotation read out per part as a 6D vector (:func:`geo3d.rotations.sixd_to_matrix`) from the
attended part token. They need rotation augmentation to generalise across orientations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geo3d._validation import check_finite, shape_of, value_error
from geo3d.body import ARTEQ_NUM_PARTS, SMPL_PARENTS

__all__ = ["ArtEqNet", "ARTEQ_PARENTS", "BACKBONES", "EQUIVARIANT_BACKBONES", "GEOMETRY_VECTORS",
           "TWIST_VECTORS", "TFN_RADIUS", "EPN_KERNEL_SCALE", "DESCRIPTOR_SCALES", "DESCRIPTOR_AGG", "local_shape_descriptors",
           "part_geometry"]

#: Parent of each ArtEq part in the 22-part tree (-1 for the pelvis): ``SMPL_PARENTS[:22]``.
ARTEQ_PARENTS: tuple[int, ...] = tuple(int(p) for p in SMPL_PARENTS[:ARTEQ_NUM_PARTS])
#: Accepted ``backbone`` names: the equivariant one first.
BACKBONES = ("vn", "vn_dgcnn", "tfn", "epn", "pointnet", "dgcnn")
#: The equivariant ones: exactly SE(3)-equivariant for every rotation, except ``"epn"``,
#: exactly equivariant for the 60 rotations of the icosahedral group (and translations).
EQUIVARIANT_BACKBONES = ("vn", "vn_dgcnn", "tfn", "epn")

#: Per-part geometry vectors of ``part_geometry=True`` (per part; doubled with the parent's).
GEOMETRY_VECTORS = 6
#: extra vectors per part with ``twist_vectors=True`` (:func:`part_geometry`, ``twist=True``)
TWIST_VECTORS = 5
#: most children of a part in the 22-part tree (pelvis: hips + spine1; spine3: neck + collars)
_MAX_CHILDREN = 3
_GRAM = 8  # VN projections whose Gram matrix enters the invariant part token
TFN_RADIUS = 4.0  # "tfn": end of the radial basis, backbone units (4 x 5 cm by default)
#: "epn": kernel scale in backbone units (3 x 5 cm by default): absolute lengths, so that the
#: features carry the body's size (scale-free kernels left the shape head blind to it)
EPN_KERNEL_SCALE = 3.0
CHORDAL_LAYERS = 2  # rot_readout="chordal": attention layers over the 60 elements (as ArtEq)
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: kNN sizes of :func:`local_shape_descriptors` (``seg_descriptors=True``).
DESCRIPTOR_SCALES = (8, 16, 32, 64)
#: Neighbourhood sizes over which :func:`local_shape_descriptors` are averaged.
DESCRIPTOR_AGG = (16, 64)
_DESC_GAIN = 10.0  # lengths in RMS radii (~0.01-0.5), skewness and chirality mostly < 1


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(sizes[i + 1]), nn.GELU()]
    return nn.Sequential(*layers)


def _check_pool_power(pool_power: object) -> float:
    if isinstance(pool_power, bool) or not isinstance(pool_power, (int, float)) or \
            not 1.0 <= pool_power < float("inf"):
        raise value_error("pool_power", "a finite number >= 1", repr(pool_power))
    return float(pool_power)


def _check_flag(name: str, value: object) -> bool:
    # bool("no") is True: strings, ints and None are refused rather than guessed
    if not isinstance(value, bool):
        raise value_error(name, "True or False", repr(value))
    return value


def _check_points(points: object) -> Tensor:
    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        raise value_error("points", "a tensor of shape (B, N, 3)", shape_of(points))
    if not points.is_floating_point():
        raise value_error("points", "a floating point tensor", points.dtype)
    if points.shape[0] == 0:
        raise value_error("points", "at least one cloud", "B = 0")
    if points.shape[1] == 0:
        raise value_error("points", "at least one point", "N = 0")
    check_finite("points", points)
    return points


def _check_labels(part_labels: object, points: Tensor) -> Tensor:
    B, N = points.shape[:2]
    if not isinstance(part_labels, Tensor) or part_labels.shape != (B, N):
        raise value_error("part_labels", f"a tensor of shape (B, N) = {(B, N)}",
                          shape_of(part_labels))
    if part_labels.is_floating_point() or part_labels.is_complex() or \
            part_labels.dtype == torch.bool:
        raise value_error("part_labels", "an integer tensor", part_labels.dtype)
    if part_labels.numel():
        lo, hi = int(part_labels.min()), int(part_labels.max())
        if lo < 0 or hi >= ARTEQ_NUM_PARTS:
            raise value_error("part_labels", f"labels in [0, {ARTEQ_NUM_PARTS})",
                              f"range [{lo}, {hi}]")
    return part_labels.to(device=points.device, dtype=torch.long)


def _children() -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in range(ARTEQ_NUM_PARTS)]
    for k, p in enumerate(ARTEQ_PARENTS):
        if p >= 0:
            kids[p].append(k)
    return kids


@functools.cache
def _child_slots() -> tuple[Tensor, Tensor]:
    """``(22, 3)`` child indices of every part in index order, and a 0/1 mask of the used
    slots (CPU tables, built once)."""
    slots = torch.zeros(ARTEQ_NUM_PARTS, _MAX_CHILDREN, dtype=torch.long)
    mask = torch.zeros(ARTEQ_NUM_PARTS, _MAX_CHILDREN, dtype=torch.float64)
    for k, ch in enumerate(_children()):
        for s, j in enumerate(sorted(ch)):
            slots[k, s], mask[k, s] = j, 1.0
    return slots, mask


def part_geometry(x: Tensor, w: Tensor, twist: bool = False) -> Tensor:
    """Equivariant geometry vectors of every part from pooling weights.

    For part ``k`` with weights ``w[:, :, k]`` (summing to 1 over the points): centroid
    ``c_k = sum_n w_nk x_n``, covariance ``C_k = sum_n w_nk (x_n - c_k)(x_n - c_k)^T``; the
    vectors are ``a = c_k - c_parent`` (the pelvis: ``c_0``, relative to the origin, which
    :class:`ArtEqNet` puts at the centroid of the scan), ``b`` = the mean of
    ``c_child - c_k`` over the children of ``k`` in the 22-part tree (0 for a leaf),
    ``C_k a``, ``C_k b``, ``C_k^2 a``, ``C_k^2 b``. Each is a polynomial in the points, so
    rotating the input by ``g`` rotates every vector by ``g``; a translation cancels except
    in the pelvis's ``a`` (hence the centring). The bone direction (``a``, ``b``) and the
    principal axes of the part's points (``C_k``) are what the part's rotation moves.

    With ``twist=True`` five more vectors carry information about the rotation about the
    bone (the twist) that the six above miss: ``d_1, d_2, d_3`` = ``c_child - c_k`` of
    each child in the order of the part indices (zero where a part has fewer children;
    new information only for the pelvis (hips, spine1) and spine3 (neck, collars), whose
    children's sideways offsets cancel in ``b``; for a one-child part ``d_1 = b``), the
    third-moment vector ``m = sum_n w_nk |y_n|^2 y_n / tr C_k`` with ``y_n = x_n - c_k``
    (points toward the part's heavier side; unlike an eigenvector it has a definite sign)
    and ``C_k m / tr C_k``. ``m`` and ``C_k m`` are new only on parts whose points are not
    symmetric about their centroid; the twist of a part that is exactly rotationally
    symmetric about its bone cannot be read from its points by any equivariant function.
    Dividing by the rotation-invariant ``tr C_k`` (computed from ``y``, clamped at the
    dtype's ``tiny ** 0.5``) keeps both in the points' unit. Cost: a
    :math:`(B, N, 22, 3)` temporary (forward + backward of :math:`B = 8, N = 6890` in
    float32: ~0.2 s on one CPU thread, 8x the six vectors alone).

    Args:
        x: :math:`(B, N, 3)` centred points (any unit; vectors are in that unit, ``C^j``
            terms in its ``2j + 1``-th power).
        w: :math:`(B, N, 22)` pooling weights, each column summing to 1 over the points.
        twist: append the :data:`TWIST_VECTORS` = 5 twist vectors.

    Returns:
        :math:`(B, 22, 6, 3)`: ``[a, b, C a, C b, C^2 a, C^2 b]`` per part; with ``twist``
        :math:`(B, 22, 11, 3)`: ``[..., d_1, d_2, d_3, m, C m / tr C]``.

    Source: this project (an explicit-geometry input to the per-part readout of Feng et al.,
    ICCV 2023, arXiv:2304.10528).

    Example:
        >>> x = torch.randn(1, 100, 3)
        >>> w = torch.softmax(torch.randn(1, 100, 22), dim=1)
        >>> part_geometry(x, w).shape
        torch.Size([1, 22, 6, 3])
    """
    c = torch.einsum("bnk,bnx->bkx", w, x)  # (B, P, 3)
    par = torch.tensor([max(p, 0) for p in ARTEQ_PARENTS], device=x.device)
    a = c - c[:, par]
    a[:, 0] = c[:, 0]
    kids = _children()
    M = torch.zeros(ARTEQ_NUM_PARTS, ARTEQ_NUM_PARTS, dtype=x.dtype, device=x.device)
    for k, ch in enumerate(kids):
        for j in ch:
            M[k, j] = 1.0 / len(ch)
    has = torch.tensor([bool(ch) for ch in kids], device=x.device)
    b = torch.einsum("kj,bjx->bkx", M, c) - torch.where(has[:, None], c, torch.zeros_like(c))
    # C_k v = sum_n w_nk (x_n - c_k) ((x_n - c_k) . v), without forming the (B, N, P, 3) array
    xx = torch.einsum("bnk,bnx,bny->bkxy", w, x, x)  # second moment
    C = xx - c.unsqueeze(-1) * c.unsqueeze(-2)  # (B, P, 3, 3)
    v = torch.stack([a, b], dim=2)  # (B, P, 2, 3)
    Cv = torch.einsum("bkxy,bkjy->bkjx", C, v)
    CCv = torch.einsum("bkxy,bkjy->bkjx", C, Cv)
    out = [v, Cv, CCv]
    if twist:
        slots, mask = _child_slots()
        slots, mask = slots.to(x.device), mask.to(device=x.device, dtype=x.dtype)
        d = (c[:, slots] - c[:, :, None]) * mask[:, :, None]  # (B, P, 3, 3): child offsets
        y = x[:, :, None] - c[:, None]  # (B, N, P, 3)
        # tr C and C m from y itself (not from the second moment minus c c^T, which cancels):
        # then |m| <= max |y_n| and |C m| / tr C <= |m| up to rounding, also as tr C -> 0
        wy2 = w * y.square().sum(-1)  # (B, N, P)
        tr = wy2.sum(1).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)[..., None]  # (B, P, 1)
        m = torch.einsum("bnk,bnkx->bkx", wy2, y) / tr
        Cm = torch.einsum("bnk,bnkx,bnk->bkx", w, y, torch.einsum("bnkx,bkx->bnk", y, m)) / tr
        out += [d, m[:, :, None], Cm[:, :, None]]
    return torch.cat(out, dim=2)


def _soft_cbrt(p: Tensor, delta: float = 1e-6) -> Tensor:
    """``sign(p) ((|p| + delta)^(1/3) - delta^(1/3))`` as ``(..., 1)``: a cube root (spreads
    small values) that stays Lipschitz at 0 (slope ``delta^(-2/3) / 3``), so rounding noise
    in ``p`` stays at rounding level (a plain cube root turns 1e-18 into 1e-6)."""
    return (p.sign() * ((p.abs() + delta) ** (1 / 3) - delta ** (1 / 3)))[..., None]


def local_shape_descriptors(x: Tensor, scales: Sequence[int] = DESCRIPTOR_SCALES,
                            agg: Sequence[int] = DESCRIPTOR_AGG) -> Tensor:
    """Hand-made local shape descriptors of every point: rotation-, translation- and
    scale-invariant, one reflection-odd number per scale.

    For each kNN size ``k`` in ``scales`` (the point itself included; points tied at the
    ``k``-th distance share its weight, :func:`geo3d.nn.knn_neighborhood`), with ``e1, e2,
    e3`` the principal axes of the neighbours (decreasing spread ``s1 >= s2 >= s3``), their
    centroid ``c`` and third moments ``m_i = mean(((p - c) . e_i)^3)``, 7 numbers:
    ``s3, s2, s1`` (ascending), ``|x - c|``, the distance to the ``k``-th neighbour,
    ``|m1| / s1^3`` (skewness along the main axis) and the chirality
    ``soft_cbrt(m1 m2 m3' / s1^9)`` with ``m3'`` taken along ``e1 x e2`` and
    ``soft_cbrt(p) = sign(p) ((|p| + 1e-6)^(1/3) - 1e-2)``: unchanged when an axis is
    flipped, continuous, and of opposite sign for a mirror image (a left limb vs a right
    one). Then the means of all of them over the ``a`` nearest points for each ``a`` in
    ``agg``. Lengths are in units of the cloud's RMS radius about its centroid
    (scale-free). Computed in float64 without gradients.

    Equivariance: kNN sets, centroids, eigen-decompositions of the covariance and moments
    only use distances and inner products, the neighbourhoods are symmetric under distance
    ties and duplicates, and no number depends on the sign of an axis, so every number is
    invariant to any rotation and translation of the cloud up to float64 rounding, also on
    mirror-symmetric neighbourhoods (the odd moments are then 0 up to rounding and so are
    the numbers built from them). Exception: where two spreads are equal (a neighbourhood
    with a rotational symmetry, as on exact grids) the axes are not defined and the two
    third-moment numbers follow the rounding; the spreads and distances stay invariant.

    Args:
        x: :math:`(B, N, 3)` floating points (any unit).
        scales: non-empty sequence of kNN sizes (clamped to ``N``).
        agg: sequence of averaging neighbourhood sizes (clamped to ``N``; may be empty).

    Returns:
        :math:`(B, N, 7 |scales| (1 + |agg|))` in ``x``'s dtype, columns per scale in the
        order above, then the same block averaged over each ``agg`` neighbourhood.

    Raises:
        ValueError: ``x`` not a floating ``(B, N, 3)`` tensor with ``N >= 1``, NaN/inf in
            ``x`` (value checks on, :func:`geo3d.rotations.set_value_checks`), ``scales``
            not a non-empty sequence of positive ints, ``agg`` not a sequence of positive
            ints.

    Source: this project; the ArtEq segmentation-transfer probe
    (``benchmarks/arteq_seg_transfer.py``, ``docs/arteq_experiments.md``, "Segmentation
    transfer probe") measured ood part accuracy 0.30 for the net plus descriptors of this kind
    vs 0.20 for the net alone.

    Example:
        >>> local_shape_descriptors(torch.randn(2, 100, 3)).shape
        torch.Size([2, 100, 84])
    """
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != 3 or x.shape[1] < 1 \
            or not x.is_floating_point():
        raise value_error("x", "a floating (B, N, 3) tensor with N >= 1",
                          shape_of(x) if not isinstance(x, Tensor) or x.is_floating_point()
                          else f"dtype {x.dtype}")
    check_finite("x", x)
    sizes = {}
    for name, seq in (("scales", scales), ("agg", agg)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or (
                name == "scales" and not seq) or any(
                isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in seq):
            raise value_error(name, "a " + ("non-empty " if name == "scales" else "")
                              + "sequence of positive int sizes", repr(seq))
        sizes[name] = [int(k) for k in seq]
    from geo3d.nn._graph import _knn_neighborhood

    tiny = torch.finfo(torch.float64).tiny
    with torch.no_grad():
        y = x.detach().to(torch.float64)
        B, N, _ = y.shape
        y = y - y.mean(dim=1, keepdim=True)
        # max-abs first, so the squares neither overflow (1e155) nor underflow (1e-160)
        y = y / y.abs().amax(dim=(1, 2), keepdim=True).clamp_min(tiny)
        rms = y.square().sum(-1).mean(1).sqrt().clamp_min(tiny)
        y = y / rms[:, None, None]
        bi = torch.arange(B, device=y.device)[:, None, None]

        def hood(k: int) -> tuple[Tensor, Tensor]:  # tie-symmetric kNN: indices, weights
            nb = _knn_neighborhood(y, k, None)
            w = nb.weight / nb.weight.sum(-1, keepdim=True)
            return nb.idx, w

        def wmean(v: Tensor, w: Tensor) -> Tensor:  # v (B, N, K, ...) -> (B, N, ...)
            return (v * w.view(*w.shape, *([1] * (v.dim() - 3)))).sum(2)

        f = []
        for k in sizes["scales"]:
            idx, w = hood(k)
            nb = y[bi, idx]  # (B, N, K, 3)
            c = wmean(nb, w)
            z = nb - c[..., None, :]
            cov = torch.einsum("bnk,bnkx,bnky->bnxy", w, z, z)
            ev, evec = torch.linalg.eigh(cov)  # ascending
            e1, e2 = evec[..., 2], evec[..., 1]
            e3 = torch.linalg.cross(e1, e2)
            m = [wmean(torch.einsum("bnkx,bnx->bnk", z, e) ** 3, w) for e in (e1, e2, e3)]
            s = ev.clamp_min(0).sqrt()  # (B, N, 3) ascending
            s1 = s[..., 2].clamp_min(1e-12)  # 0 only if all k neighbours coincide (m = 0)
            far = torch.where(w > 0, (nb - y[:, :, None]).norm(dim=-1), 0.0).amax(-1)
            f += [s, (y - c).norm(dim=-1, keepdim=True), far[..., None],
                  (m[0].abs() / s1 ** 3)[..., None], _soft_cbrt(m[0] * m[1] * m[2] / s1 ** 9)]
        f = torch.cat(f, dim=-1)  # (B, N, 7 S)
        out = [f]
        for a in sizes["agg"]:
            idx, w = hood(a)
            out.append(wmean(f[bi, idx], w))
        return torch.cat(out, dim=-1).to(x.dtype)


@functools.lru_cache(maxsize=1)
def _anchors64() -> Tensor:
    """The 60 icosahedral rotations in float64 (``rot_readout="chordal"``'s anchors; cast
    per call, not kept as a buffer, so a float32 round trip cannot round them)."""
    from geo3d.groups import IcosahedralGroup

    return IcosahedralGroup().elements(dtype=torch.float64)


def _norms_and_gram(Q: Tensor, proj: nn.Module) -> Tensor:
    """Frame-free invariants of per-part vectors ``Q (B, P, C, 3)``: their norms and the
    Gram matrix of ``_GRAM`` learned VN projections ``proj`` -> ``(B, P, C + _GRAM**2)``."""
    G = proj(Q.permute(0, 2, 3, 1))  # (B, _GRAM, 3, P)
    gram = torch.einsum("bgxp,bhxp->bpgh", G, G).flatten(2)
    return torch.cat([torch.linalg.vector_norm(Q, dim=-1), gram], dim=-1)


class ArtEqNet(nn.Module):
    """ArtEq: SMPL pose and shape of a point cloud, SE(3)-equivariant (see module docs).

    Args:
        backbone: ``"vn"`` (local VN EdgeConv, exactly SE(3)-equivariant; default),
            ``"vn_dgcnn"`` (:class:`geo3d.nn.VNDGCNN`, also equivariant), ``"tfn"`` (the
            e3nn tensor-field network :class:`geo3d.nn.TFNEncoder`: local, relative
            positions only, radial basis up to :data:`TFN_RADIUS` backbone units; hidden
            irreps ``h x 0e + h x 0o + h/2 x 1o + h/2 x 1e`` with ``h = hidden[0]``,
            ``len(hidden)`` gated layers, ``3F x 0e`` invariant and ``F x 1o`` vector
            outputs per point; ``batch_norm`` and ``dynamic_graph`` do not apply;
            equivariant to e3nn's float64 rounding, ~1e-8, not 1e-9), ``"epn"`` (the
            reference's icosahedral group convolution in pure torch,
            :class:`~geo3d.apps.arteq._backbones.EPNLocalEncoder`: blocks of widths
            ``hidden``, ``k`` neighbours; exactly equivariant for the 60 rotations of the
            icosahedral group only, approximately between them; kernel scale
            :data:`EPN_KERNEL_SCALE` backbone units; ``batch_norm`` and
            ``dynamic_graph`` do not apply; run it on ``num_centers`` of a few hundred
            points: it keeps 60 features per point), or the non-equivariant baselines
            ``"pointnet"`` / ``"dgcnn"``.
        num_betas: shape coefficients predicted.
        k: neighbours of the backbone's kNN graphs (including the point itself; for
            ``"vn"`` and ``"epn"`` the ``k`` with positive soft weight, the ``k+1``-th sets the
            radius).
        feat_dim: per-point feature width ``F`` of the backbone: vector channels for
            ``"vn"`` (``3F`` numbers), ``3F`` scalar channels for the baselines (same size).
        hidden: backbone block widths (vector channels; the baselines use 3x each).
        dynamic_graph: ``"vn_dgcnn"`` only: recompute the kNN graph in feature space for
            every block (DGCNN); ``False`` (default) reuses the coordinate graph (one kNN,
            local receptive fields, no float32 rounding flips in feature space).
        d_model: width of the invariant part tokens and the attention.
        num_layers: self-attention layers over the 22 part tokens.
        num_heads: attention heads.
        rot_hidden: vector channels of the per-part VN rotation MLP (VN backbones).
        rot_context: VN backbones: ``"local"`` (default, as the reference) reads a part's
            rotation from its own and its parent's pooled features only (exact
            articulation locality, see module docs); ``"global"`` adds the cloud's
            mean-pooled equivariant feature to every part's vectors and steers the readout
            with the attended (cross-part) tokens: still exactly equivariant, but every
            part then sees the whole body (e.g. to resolve the twist of tube-like limbs);
            ``"geometry"`` (needs ``part_geometry=True``) reads it from the part's and its
            parent's geometry vectors only (their norms and Gram matrix steer the readout),
            no backbone feature: with given part labels the rotations depend on the points
            and the labels alone, except through parts without a labelled point, which fall
            back to their predicted weights (ArtEq labels never contain the feet 10, 11, so
            the ankles' child vectors come from the predicted foot weights). Measured on the
            demo data with true-part pooling (``docs/arteq_experiments.md``,
            out-of-distribution experiments): V2V 4.6 / 12.6 cm in_dist / ood vs
            10.1 / 19.9 for ``"local"``; with the net's own segmentation in_dist improves
            and ood does not (segmentation-bound). The packaged configs use ``"geometry"``
            since 9620a7b. The baselines ignore ``rot_context`` (configs are shared with them).
        rot_readout: equivariant backbones: how a part's rotation is read from its vector
            channels ``z_h``. ``"svd"`` (default): three vectors, linear in ``z_h`` with
            weights steered by the part's invariants, projected onto SO(3) by SVD with the
            det fix: exactly equivariant for every rotation. ``"chordal"``: the reference's
            readout, one token per icosahedral element ``a`` (``R_a^T z_h`` for all ``h``,
            plus the part's invariants and a part embedding), :data:`CHORDAL_LAYERS`
            self-attention layers over the 60 tokens, one unnormalised weight ``w_a`` per
            element, and the weighted chordal L2 mean ``proj_SO3(sum_a w_a R_a)`` of the
            anchors: exactly equivariant for the 60 elements only (tested in float64),
            approximately between them, as closely as training made it: the 22-min demo nets
            were off by 0.19-0.29 deg on average (3.3-10.4 deg at most), untrained small
            nets by up to tens of degrees. The baselines ignore it.
        batch_norm: batch norm inside the backbone (in training mode it mixes the samples
            of a batch: equivariance then holds for one rotation of the whole batch; in
            eval mode per sample). Its running statistics lag behind fast-changing
            features in short runs (momentum 0.1): after 40 Adam steps at lr 1e-2 on two
            scans the eval-mode rotation loss was ~3x the train-mode one; a few no-grad
            training-mode passes over data before evaluating reduce the gap.
        num_centers: at most this many points enter the backbone (``None``: all); larger
            scans are subsampled and features interpolated back (see module docs).
        interp_sigma: width ``sigma`` of the Gaussian interpolation weights, metres.
        unit: length unit of the backbone, metres: centred points are divided by it, so
            that neighbour offsets (centimetres on a body) give features of order one
            (batch-norm running variances start at 1 and would otherwise need hundreds of
            steps to reach the ~1e-4 variances of metre-scale offsets: a train/eval gap).
        seg_norms: equivariant backbones: the segmentation head also sees the norms of
            each point's vector channels (``F`` frame-free invariants). The other per-point
            invariants are read in a frame computed from the global feature, which keeps
            moving early in training; the norms do not depend on it. ``False``: as before.
        part_geometry: add explicit per-part geometry to the rotation and shape readouts:
            from the pooling weights ``w`` and the centred points divided by the cloud's RMS
            radius (dimensionless, finite at any coordinate scale in float32), each part's
            weighted centroid ``c_k`` and covariance ``C_k`` give the vectors
            ``c_k - c_parent``, the mean of ``c_child - c_k`` over the children (0 for a
            leaf), ``C_k`` and ``C_k^2`` applied to both (:data:`GEOMETRY_VECTORS` = 6
            vectors), for the part and its parent (kinematic conditioning). They rotate with
            the input (exact SE(3) equivariance is kept): VN backbones feed them to the VN
            rotation readout as extra vector channels (their norms and Gram matrix to the
            invariant token); the baselines get the same numbers flattened into the token.
            ``False`` (default): as before.
        twist_vectors: with ``part_geometry``, five more vectors per part (each child's
            centroid offset and the part's third-moment vector, see :func:`part_geometry`)
            that carry the rotation about the bone where the six vectors miss it: on the
            pelvis and spine3 (whose children's mean offset cancels sideways) and on parts
            whose points are not symmetric about their centroid. Exactly equivariant.
            Measured on the demo data (``docs/arteq_experiments.md``, "Twist vectors";
            four 22-min runs): with true-part pooling the pelvis's rotation error falls
            from 51-56 to 18 deg in_dist (100 to 31 deg ``ood``) and V2V from 5.5-8.6 to
            3.7-4.8 cm in_dist; with the net's own segmentation ``ood`` V2V is 1-4 cm
            worse, so the configs leave it off. ``False`` (default): as before. ``True``
            without ``part_geometry``: ValueError.
        normalize_invariants: divide the per-point invariant features and the global
            invariant of each cloud by their root mean square over that cloud (an invariant
            scalar, so equivariance is kept). The VN backbones read these invariants in a
            frame built from the mean-pooled feature, whose scale is arbitrary: measured at
            initialisation on demo body scans, their RMS was ~3e-7 (``"vn"``) and ~1e-3
            (``"vn_dgcnn"``), far below the linear layers' biases. ``False`` (default): as
            before.
        chiral: VN backbones: make the invariant features tell left from right. VN layers
            are O(3)-equivariant, so every invariant they give is also unchanged by a
            reflection; on a nearly mirror-symmetric body every equivariant vector lies near
            the symmetry plane and a left limb cannot be told from the right one (the
            segmentation then confuses most of the 22 parts, which come in left/right
            pairs). With ``chiral=True`` two learned combinations ``a, b`` of the global
            equivariant feature give the axis ``c = (a x b) / (|a| |b|)`` (a pseudo-vector:
            rotates with the input, flips under a reflection); the per-point components
            ``V_n . c`` of the vector channels go to the segmentation head, their per-part
            pooled values (part + parent) to the part token and the rotation steering (not
            with ``rot_context="geometry"``); and
            the per-part rotation readout also gets ``rot_hidden // 2`` cross products of
            its own vector channels. The network stays exactly equivariant to rotations
            and translations (SE(3)); it is no longer reflection-invariant. ``False``: as
            before. Ignored by the baselines.
        seg_descriptors: the segmentation head also sees
            :func:`local_shape_descriptors` of every point (84 hand-made numbers per point
            from its 8-64 nearest neighbours; rotation-, translation- and scale-invariant,
            some reflection-odd), so equivariance is kept for every backbone. Cost (float64,
            no gradient, one CPU thread, measured under load): ~0.06 s per 512-point cloud,
            ~0.55 s per 5000-point cloud. Motivation: in the
            segmentation-transfer probe (``docs/arteq_experiments.md``) they
            raised part accuracy on the joint-limit poses from 0.20 to 0.30. Exactness: on
            points whose neighbourhood has a rotational symmetry (two equal spreads, as on
            exact grids) the two third-moment numbers have no defined axis and follow the
            rounding, so the segmentation of such clouds is not exactly invariant; on scans
            and on mirror-symmetric clouds it is (float64, tested). ``False`` (default): as
            before.
        pool_power: sharpness ``tau >= 1`` of the predicted pooling weights: the
            per-point part probabilities are raised to ``tau`` and renormalised over the
            parts (``softmax(tau * logits)``) before the L1 normalisation over the points;
            large values approach hard argmax pooling. ``1`` (default): the reference's
            soft pooling. An attribute that may be changed on a trained net (e.g. sharper
            pooling at test time for a net trained with ground-truth pooling): assignments
            are validated and recorded in ``config``.

    Attributes:
        config: the JSON-able keyword arguments: ``ArtEqNet(**net.config)`` rebuilds it.

    Raises:
        ValueError: an unknown ``backbone`` or a non-positive size/width, ``num_heads``
            not dividing ``d_model``, non-positive ``interp_sigma``/``unit``, ``pool_power``
            below 1 or not finite, a boolean option (``dynamic_graph``, ``batch_norm``,
            ``seg_norms``, ``part_geometry``, ``normalize_invariants``, ``chiral``,
            ``seg_descriptors``, ``twist_vectors``) that is not a ``bool``, an unknown
            ``rot_context`` or ``rot_readout``, or
            ``twist_vectors`` without ``part_geometry``; the message names the argument.

    Source: Feng et al., "Generalizing Neural Human Fitting to Unseen Poses With
    Articulated SE(3) Equivariance", ICCV 2023, arXiv:2304.10528; reference code
    ``HavenFeng/ArtEq`` (``src/models_pointcloud.py``, ``src/so3net.py``).

    Example:
        >>> net = ArtEqNet(feat_dim=8, hidden=(8, 8), d_model=16, num_heads=2).eval()
        >>> out = net(torch.randn(2, 64, 3))
        >>> out["part_rot"].shape, out["body_pose"].shape, out["betas"].shape
        (torch.Size([2, 22, 3, 3]), torch.Size([2, 23, 3, 3]), torch.Size([2, 10]))
    """

    def __init__(
        self,
        backbone: str = "vn",
        num_betas: int = 10,
        *,
        k: int = 16,
        feat_dim: int = 64,
        hidden: Sequence[int] = (32, 32, 64),
        dynamic_graph: bool = False,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        rot_hidden: int = 64,
        rot_context: str = "local",
        rot_readout: str = "svd",
        batch_norm: bool = True,
        num_centers: int | None = 1024,
        interp_sigma: float = 0.03,
        unit: float = 0.05,
        seg_norms: bool = False,
        part_geometry: bool = False,
        normalize_invariants: bool = False,
        pool_power: float = 1.0,
        chiral: bool = False,
        seg_descriptors: bool = False,
        twist_vectors: bool = False,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise value_error("backbone", f"one of {BACKBONES}", repr(backbone))
        for name, v in (("num_betas", num_betas), ("k", k), ("feat_dim", feat_dim),
                        ("d_model", d_model), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("rot_hidden", rot_hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name in (
                    "num_layers",) else 1):
                raise value_error(name, "a positive int", repr(v))
        for name, v in (("dynamic_graph", dynamic_graph), ("batch_norm", batch_norm),
                        ("seg_norms", seg_norms), ("part_geometry", part_geometry),
                        ("normalize_invariants", normalize_invariants), ("chiral", chiral),
                        ("seg_descriptors", seg_descriptors), ("twist_vectors", twist_vectors)):
            _check_flag(name, v)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden \
                or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise value_error("hidden", "a non-empty list of positive int widths", repr(hidden))
        hidden = [int(h) for h in hidden]
        if num_centers is not None and (isinstance(num_centers, bool) or not isinstance(
                num_centers, int) or num_centers < 1):
            raise value_error("num_centers", "a positive int or None", repr(num_centers))
        for name, v in (("interp_sigma", interp_sigma), ("unit", unit)):
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise value_error(name, "a positive finite number (metres)", repr(v))
        pool_power = _check_pool_power(pool_power)
        if rot_context not in ("local", "global", "geometry"):
            raise value_error("rot_context", "'local', 'global' or 'geometry'", repr(rot_context))
        if rot_context == "geometry" and not part_geometry:
            raise value_error("rot_context", "'local' or 'global' without part_geometry=True "
                              "('geometry' reads the part geometry vectors)", repr(rot_context))
        if rot_readout not in ("svd", "chordal"):
            raise value_error("rot_readout", "'svd' or 'chordal'", repr(rot_readout))
        if twist_vectors and not part_geometry:
            raise value_error("twist_vectors", "False without part_geometry=True (the twist "
                              "vectors extend the part geometry)", repr(twist_vectors))
        if d_model % num_heads:
            raise value_error("num_heads", f"a divisor of d_model = {d_model}", num_heads)
        self.config: dict[str, Any] = {
            "backbone": backbone, "num_betas": num_betas, "k": k, "feat_dim": feat_dim,
            "hidden": hidden, "dynamic_graph": bool(dynamic_graph), "d_model": d_model,
            "num_layers": num_layers, "num_heads": num_heads, "rot_hidden": rot_hidden,
            "rot_context": rot_context, "rot_readout": rot_readout,
            "batch_norm": bool(batch_norm), "num_centers": num_centers,
            "interp_sigma": float(interp_sigma), "unit": float(unit),
            "seg_norms": bool(seg_norms), "part_geometry": bool(part_geometry),
            "normalize_invariants": bool(normalize_invariants), "pool_power": float(pool_power),
            "chiral": bool(chiral), "seg_descriptors": bool(seg_descriptors),
            "twist_vectors": bool(twist_vectors),
        }
        self.chiral = bool(chiral) and backbone in EQUIVARIANT_BACKBONES
        n_chi = 2 * feat_dim if self.chiral else 0  # pooled chiral invariants (part + parent)
        h_cross = max(rot_hidden // 2, 1) if self.chiral else 0
        self.pool_power = pool_power  # validated property, kept in `config`
        self.normalize_invariants = bool(normalize_invariants)
        self.part_geometry = bool(part_geometry)
        self.twist_vectors = bool(twist_vectors)
        n_geo = 2 * (GEOMETRY_VECTORS + (TWIST_VECTORS if self.twist_vectors else 0)) \
            if self.part_geometry else 0  # vectors (part + parent)
        self.unit = float(unit)
        self.num_centers = num_centers
        self.interp_sigma = float(interp_sigma)
        self.backbone = backbone
        self.equivariant = backbone in EQUIVARIANT_BACKBONES
        self.num_betas = num_betas
        P = ARTEQ_NUM_PARTS
        self.register_buffer("parents", torch.tensor(
            [max(p, 0) for p in ARTEQ_PARENTS], dtype=torch.long), persistent=False)

        import geo3d.nn as gnn

        if backbone == "vn":
            from geo3d.apps.arteq._backbones import VNLocalEncoder

            self.encoder = VNLocalEncoder(k=k, feat_dim=feat_dim, hidden=tuple(hidden),
                                          batch_norm=batch_norm)
            c_pt = 3 * feat_dim
        elif backbone == "vn_dgcnn":
            self.encoder = gnn.VNDGCNN(k=k, feat_dim=feat_dim, hidden=tuple(hidden),
                                       dynamic=dynamic_graph, batch_norm=batch_norm)
            c_pt = 3 * feat_dim  # invariant per-point features
        elif backbone == "tfn":  # e3nn tensor-field network: local, translation-invariant
            h = hidden[0]
            self.encoder = gnn.TFNEncoder(
                irreps_hidden=f"{h}x0e + {h}x0o + {max(h // 2, 1)}x1o + {max(h // 2, 1)}x1e",
                irreps_out=f"{3 * feat_dim}x0e + {feat_dim}x1o", num_layers=len(hidden),
                lmax=2, k=k, max_radius=TFN_RADIUS)
            c_pt = 3 * feat_dim  # local invariant (0e) per-point features
        elif backbone == "epn":  # icosahedral group convolution, as the reference
            from geo3d.apps.arteq._backbones import EPNLocalEncoder

            self.encoder = EPNLocalEncoder(k=k, feat_dim=feat_dim, hidden=tuple(hidden),
                                           kernel_scale=EPN_KERNEL_SCALE)
            c_pt = 3 * feat_dim  # per-point means over the 60 group elements
        elif backbone == "dgcnn":
            self.encoder = gnn.DGCNN(k=k, feat_dim=3 * feat_dim,
                                     hidden=tuple(3 * h for h in hidden), batch_norm=batch_norm)
            c_pt = 3 * feat_dim
        else:
            self.encoder = gnn.PointNet(feat_dim=3 * feat_dim,
                                        hidden=tuple(3 * h for h in hidden),
                                        batch_norm=batch_norm)
            c_pt = 3 * feat_dim
        c_glob = 3 * feat_dim
        # segmentation from per-point invariant features and the global invariant
        self.seg_norms = bool(seg_norms) and self.equivariant
        self.seg_descriptors = bool(seg_descriptors)
        n_desc = 7 * len(DESCRIPTOR_SCALES) * (1 + len(DESCRIPTOR_AGG))
        c_seg = c_pt + c_glob + (feat_dim if self.seg_norms else 0) + (
            feat_dim if self.chiral else 0) + (n_desc if self.seg_descriptors else 0)
        if self.chiral:
            self.chiral_axes = gnn.VNLinear(feat_dim, 2)
        self.seg_head = _mlp([c_seg, d_model, d_model, P])
        # invariant part token: pooled per-point features of the part and its parent
        # (+ for "vn": norms and a Gram matrix of the equivariant part features)
        n_tok = 2 * c_pt
        if self.equivariant:
            self.gram = gnn.VNLinear(2 * feat_dim + n_geo, _GRAM)
            n_tok += 2 * feat_dim + n_geo + _GRAM * _GRAM + n_chi
        else:
            n_tok += 3 * n_geo  # the same geometry as plain numbers (not equivariant)
        self.token = _mlp([n_tok, d_model, d_model])
        self.part_embed = nn.Parameter(0.02 * torch.randn(P, d_model))
        if num_layers > 0:
            layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=2 * d_model,
                                               dropout=0.0, batch_first=True, norm_first=True)
            self.mixer: nn.Module = nn.TransformerEncoder(layer, num_layers,
                                                          enable_nested_tensor=False)
        else:
            self.mixer = nn.Identity()
        self.out_norm = nn.LayerNorm(d_model)
        # shape: attention pooling over the part tokens -> betas
        self.beta_score = nn.Linear(d_model, 1)
        self.beta_head = _mlp([d_model, d_model, num_betas])
        if self.equivariant:
            # per part: shared VN MLP on [part, parent] vector features, then three vectors
            # from per-part static weights + weights steered by the part's own frame-free
            # invariants (norms, Gram matrix): the readout of part k sees only the features
            # pooled on part k and its parent, as in the reference (no cross-part mixing)
            self.rot_context = rot_context
            c_rot = {"global": 3 * feat_dim + n_geo, "local": 2 * feat_dim + n_geo,
                     "geometry": n_geo}[rot_context]
            if rot_context == "geometry":
                self.gram_geo = gnn.VNLinear(n_geo, _GRAM)
            self.rot_mlp = gnn.VNLinearLeakyReLU(c_rot, rot_hidden, batch_norm=False)
            if self.chiral:
                self.rot_cross = gnn.VNLinear(rot_hidden, 2 * h_cross)
            H_all = rot_hidden + h_cross
            n_steer = {"global": d_model, "local": 2 * feat_dim + n_geo + _GRAM * _GRAM + n_chi,
                       "geometry": n_geo + _GRAM * _GRAM}[rot_context]
            self.rot_readout = rot_readout
            if rot_readout == "chordal":
                # the reference's readout: per part, one token per icosahedral element a
                # (the part's vectors expressed in the anchor frame, R_a^T z_h, plus the
                # part's invariants), self-attention over the 60 tokens, one unnormalised
                # weight per element, weighted chordal mean of the anchors R_a
                self.chord_embed = nn.Linear(3 * H_all, d_model)
                self.chord_cond = nn.Linear(n_steer, d_model)
                self.chord_part = nn.Parameter(0.02 * torch.randn(P, d_model))
                layer = nn.TransformerEncoderLayer(
                    d_model, num_heads, dim_feedforward=2 * d_model, dropout=0.0,
                    batch_first=True, norm_first=True)
                self.chord_attn = nn.TransformerEncoder(layer, CHORDAL_LAYERS,
                                                        enable_nested_tensor=False)
                self.chord_out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 1))
            else:
                self.rot_static = nn.Parameter(torch.randn(P, 3, H_all) / H_all ** 0.5)
                self.rot_steer = _mlp([n_steer, d_model, 3 * H_all])
                with torch.no_grad():
                    self.rot_steer[-1].weight.mul_(0.1)
                    self.rot_steer[-1].bias.zero_()
        else:
            # per part: its own linear head token -> 6D, started at the identity
            self.rot_weight = nn.Parameter(0.01 * torch.randn(P, d_model, 6))
            self.rot_bias = nn.Parameter(torch.tensor(_IDENTITY_6D).repeat(P, 1))

    @property
    def pool_power(self) -> float:
        """Sharpness of the predicted pooling weights (see the class docs); assigning a new
        value validates it (``ValueError`` naming ``pool_power`` unless a finite number
        ``>= 1``) and updates :attr:`config`, so a saved net keeps it."""
        return self._pool_power

    @pool_power.setter
    def pool_power(self, value: float) -> None:
        value = _check_pool_power(value)
        self._pool_power = value
        self.config["pool_power"] = value

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _centers(self, x: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """Indices ``(B, M)`` of the backbone's subsample of the centred scans ``x (B, N, 3)``
        (None: all of them). With a ``generator`` (training-time variety) a random subset;
        without, one chosen by each point set alone: the points ranked by their distance to
        the centroid (a rigid motion or a reordering of the rows changes no rank) and ranks
        drawn with a fixed seed, so the output does not depend on the row order."""
        B, N = x.shape[:2]
        M = self.num_centers
        if M is None or N <= M:
            return None
        if generator is not None:
            idx = torch.randperm(N, generator=generator, device=generator.device)[:M]
            return idx.sort().values.to(x.device).expand(B, M)
        order = torch.argsort(x.detach().to(torch.float64).square().sum(-1), dim=1,
                              stable=True)
        ranks = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:M]
        return order[:, ranks.to(x.device)].sort(dim=1).values

    def forward(self, points: Tensor, part_labels: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Predict parts, per-part rotations, SMPL pose and shape.

        Args:
            points: :math:`(B, N, 3)` in metres, any pose, orientation and position (the
                network subtracts the centroid itself). Cast to the network's dtype after
                centring (centring in float64).
            part_labels: optional :math:`(B, N)` integer ArtEq labels in ``[0, 22)``. When
                given, per-part pooling uses them (one-hot) instead of the predicted
                segmentation; a part without any labelled point falls back to its predicted
                weights.
            generator: draws the backbone's subsample of a scan larger than
                ``num_centers`` (training-time variety); ``None``: a fixed subset per ``N``.

        Returns:
            dict of tensors in the network's dtype:
            ``part_logits (B, N, 22)`` (rotation- and translation-invariant for ``"vn"``),
            ``part_rot (B, 22, 3, 3)`` global rotation of every part (``g @ part_rot`` for
            input ``g x + t``), ``global_orient (B, 3, 3)`` = ``part_rot[:, 0]``,
            ``body_pose (B, 23, 3, 3)`` local rotations of SMPL joints 1..23 (22, 23 =
            hands: identity), ``betas (B, num_betas)`` (invariant), ``centre (B, 3)`` the
            subtracted centroid (metres; moves to ``g c + t``).

        Raises:
            ValueError: ``points`` not a floating ``(B, N, 3)`` tensor with ``B, N >= 1``, or
                with NaN/inf (value checks on); ``part_labels`` not an integer ``(B, N)``
                tensor with values in ``[0, 22)``.
        """
        points = _check_points(points)
        labels = None if part_labels is None else _check_labels(part_labels, points)
        dtype = self.part_embed.dtype
        wide = points.to(torch.float64) if points.dtype != torch.float64 else points
        centre = wide.mean(dim=1)  # (B, 3)
        x = (wide - centre[:, None]).to(dtype)
        B, N, _ = x.shape
        P = ARTEQ_NUM_PARTS
        par = self.parents

        idx = self._centers(x, generator)
        gidx = None if idx is None else idx[..., None].expand(-1, -1, 3)
        xs = (x if idx is None else torch.gather(x, 1, gidx)) / self.unit
        enc = self.encoder(xs)
        pt_inv = enc.point_features  # (B, M, c_pt): invariant ("vn") / plain features
        V = enc.point_equivariant  # (B, M, F, 3) ("vn") or None
        glob = enc.invariant  # (B, c_glob)
        if idx is not None:  # Gaussian interpolation from the M centres to the N points
            with torch.no_grad():  # -|x - c|^2 / (2 s^2) up to a per-row constant
                c = torch.gather(x, 1, gidx).detach()
                logit = x.detach() @ c.transpose(1, 2) - 0.5 * c.square().sum(-1)[:, None]
                wi = torch.softmax(logit / self.interp_sigma ** 2, dim=-1)  # (B, N, M)
            if V is not None:
                V = (wi @ V.flatten(2)).view(B, N, *V.shape[2:])
            if self.backbone == "vn":
                # the invariants are linear in V (read in the encoder's global frame, which
                # has no batch norm here): interpolating V alone gives the same values
                frame = self.encoder.std(enc.equivariant)[1]  # (B, 3, 3)
                pt_inv = torch.einsum("bncx,bjx->bncj", V, frame).reshape(B, N, -1)
            else:
                pt_inv = wi @ pt_inv
        if self.normalize_invariants:  # per-cloud RMS (invariant) -> order-one invariants
            tiny = torch.finfo(dtype).tiny
            pt_inv = pt_inv / pt_inv.square().mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(
                tiny ** 0.5)
            glob = glob / glob.square().mean(dim=1, keepdim=True).sqrt().clamp_min(tiny ** 0.5)
        seg_in = [pt_inv, glob[:, None].expand(B, N, -1)]
        chi = None
        if self.chiral:  # pseudo-scalar per-point invariants along a chiral axis
            ab = self.chiral_axes(enc.equivariant)  # (B, 2, 3)
            ax = torch.linalg.cross(ab[:, 0], ab[:, 1])
            ax = ax / (ab[:, 0].norm(dim=-1) * ab[:, 1].norm(dim=-1)).clamp_min(
                torch.finfo(dtype).tiny ** 0.5)[:, None]
            chi = torch.einsum("bncx,bx->bnc", V, ax)  # (B, N, F)
            if self.normalize_invariants:
                chi = chi / chi.square().mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(
                    torch.finfo(dtype).tiny ** 0.5)
            seg_in.append(chi)
        if self.seg_norms:  # frame-free per-point invariants: norms of the vector channels
            seg_in.append(torch.linalg.vector_norm(V, dim=-1))
        if self.seg_descriptors:  # invariant local shape (kNN per cloud, no N x N matrix)
            seg_in.append(_DESC_GAIN * local_shape_descriptors(x))
        logits = self.seg_head(torch.cat(seg_in, dim=-1))

        # per-part weights, L1-normalised over the points
        # softmax over the parts (sharpened by pool_power), then normalised over the points:
        # computed in log space as a softmax over the points of the log-probabilities, so a
        # part whose probabilities underflow everywhere (sharp pooling, a never-predicted
        # part) still gets finite weights and gradients (a sum clamped at `tiny` gave NaN)
        logp = torch.log_softmax(logits if self.pool_power == 1.0 else self.pool_power * logits,
                                 dim=-1)  # (B, N, P)
        prob = torch.softmax(logp, dim=1)
        if labels is not None:
            onehot = torch.nn.functional.one_hot(labels, P).to(dtype)
            count = onehot.sum(dim=1, keepdim=True)  # (B, 1, P)
            w = torch.where(count > 0, onehot / count.clamp_min(1), prob)
        else:
            w = prob

        pooled = torch.einsum("bnk,bnc->bkc", w, pt_inv)  # (B, P, c_pt)
        feats = [pooled, pooled[:, par]]
        geo = None
        if self.part_geometry:
            # scale-free: the centred points over the cloud's RMS radius (rotation- and
            # translation-invariant), so the C^2 terms (5th power of the length) stay of
            # order one at any coordinate scale (in `unit` they overflowed float32 from
            # ~10 m spreads: 2e6 units at 1e5 m, 1e31 in C^2 a)
            rms = x.square().sum(dim=-1).mean(dim=1).sqrt().clamp_min(
                torch.finfo(dtype).tiny ** 0.5)  # (B,)
            geo = part_geometry(x / rms[:, None, None], w,
                                twist=self.twist_vectors)  # (B, P, 6 or 11, 3)
            geo = torch.cat([geo, geo[:, par]], dim=2)  # (B, P, 12 or 22, 3)
            if not self.equivariant:
                feats.append(geo.flatten(2))
        if self.equivariant:
            Pe = torch.einsum("bnk,bncx->bkcx", w, V)  # (B, P, F, 3)
            Q = [Pe, Pe[:, par]] + ([] if geo is None else [geo])
            Q = torch.cat(Q, dim=2)  # (B, P, 2F (+12), 3) kinematic conditioning
            Qv = Q.permute(0, 2, 3, 1)  # (B, 2F, 3, P) VN layout
            local_inv = [_norms_and_gram(Q, self.gram)]  # frame-free, part + parent only
            if chi is not None:  # pooled chiral invariants (global axis), part + parent
                pc = torch.einsum("bnk,bnc->bkc", w, chi)
                local_inv += [pc, pc[:, par]]
            local_inv = torch.cat(local_inv, dim=-1)
            feats.append(local_inv)
        tok = self.token(torch.cat(feats, dim=-1)) + self.part_embed
        tok = self.out_norm(self.mixer(tok))  # (B, P, D) invariant for "vn"

        a = torch.softmax(self.beta_score(tok), dim=1)  # (B, P, 1)
        betas = self.beta_head((a * tok).sum(dim=1))

        from geo3d.rotations import project_to_so3, sixd_to_matrix

        if self.equivariant:
            if self.rot_context == "global":
                g_eq = enc.equivariant.unsqueeze(-1).expand(-1, -1, -1, P)  # (B, F, 3, P)
                Z = self.rot_mlp(torch.cat([Qv, g_eq], dim=1))  # (B, H, 3, P)
            elif self.rot_context == "geometry":  # the part's geometry vectors only
                geo_inv = _norms_and_gram(geo, self.gram_geo)
                Z = self.rot_mlp(geo.permute(0, 2, 3, 1))  # (B, 12, 3, P) VN layout
            else:
                Z = self.rot_mlp(Qv)  # (B, H, 3, P)
            if self.chiral:  # pseudo-vector channels: cross products of the part's vectors
                ab = self.rot_cross(Z)  # (B, 2 Hc, 3, P)
                hc = ab.shape[1] // 2
                a_, b_ = ab[:, :hc], ab[:, hc:]
                cr = torch.linalg.cross(a_, b_, dim=2)
                scale = (a_.norm(dim=2, keepdim=True) * b_.norm(dim=2, keepdim=True)).add(
                    torch.finfo(dtype).eps).sqrt()  # degree 1 in the features
                Z = torch.cat([Z, cr / scale], dim=1)
            H = Z.shape[1]
            if self.rot_context == "global":
                steer_in = tok
            elif self.rot_context == "geometry":
                steer_in = geo_inv
            else:
                steer_in = local_inv
            if self.rot_readout == "chordal":
                A = _anchors64().to(device=x.device, dtype=dtype)  # (60, 3, 3)
                # token of element a: (R_a^T z_h)_y = sum_x R_a[x, y] z_h[x]; rotating the
                # input by a group element g permutes the tokens (a -> g^-1 a), so the
                # weights permute with them and sum_a w_a R_a becomes g sum_a w_a R_a
                t = torch.einsum("axy,bhxp->bpahy", A, Z).flatten(3)  # (B, P, 60, 3H)
                e = self.chord_embed(t) + (self.chord_cond(steer_in) + self.chord_part)[:, :, None]
                e = self.chord_attn(e.flatten(0, 1))  # (B P, 60, D): no position encoding
                wts = self.chord_out(e).view(B, P, -1)  # (B, P, 60), not softmaxed
                R = project_to_so3(torch.einsum("bpa,axy->bpxy", wts, A))
            else:
                coef = self.rot_static + self.rot_steer(steer_in).view(B, P, 3, H)
                u = torch.einsum("bpjh,bhxp->bpxj", coef, Z)  # (B, P, 3, 3): columns = vectors
                R = project_to_so3(u)
        else:
            six = torch.einsum("bpd,pds->bps", tok, self.rot_weight) + self.rot_bias
            R = sixd_to_matrix(six)
        local = R[:, par].transpose(-1, -2) @ R  # (B, P, 3, 3); row 0 unused
        eye = torch.eye(3, dtype=dtype, device=x.device).expand(B, 2, 3, 3)
        body_pose = torch.cat([local[:, 1:], eye], dim=1)  # SMPL joints 1..23
        return {
            "part_logits": logits,
            "part_rot": R,
            "global_orient": R[:, 0],
            "body_pose": body_pose,
            "betas": betas,
            "centre": centre.to(dtype),
        }
