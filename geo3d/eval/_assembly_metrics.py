"""Shape-assembly metrics (Breaking Bad benchmark), batched and device-agnostic.

Conventions (shared with :mod:`geo3d.datasets` loaders): each object holds ``P`` parts
(padded), part ``i`` is given as centred points ``points[i] (N, 3)`` and its pose maps
them into the assembled frame: ``assembled = rot[i] @ p + trans[i]``.

Aggregation (the benchmark's, reference code ``multi_part_assembly/utils/eval_utils.py``
of Wuziyi616/multi_part_assembly, functions ``rot_metrics``, ``trans_metrics``,
``calc_part_acc``): a metric is first computed **per part**, then averaged over the valid
parts of an object, then over objects (``reduction="mean"``). In particular the RMSEs
``rmse_r_euler`` and ``rmse_t`` are per-part root-mean-squares over the 3 components
(Euler angles in degrees, translation coordinates), *then* averaged over parts: two parts,
one exact and one off by 30° about x, give ``(0 + sqrt(30²/3)) / 2 = 8.66°``. The
variants ``rmse_r_euler_pooled`` and ``rmse_t_pooled`` pool the squared errors of all
valid parts of an object before the square root (``sqrt(30²/6) = 12.25°`` in the same
example); earlier geo3d versions reported those under the plain names (the recorded
``benchmarks/results/assembly_*_results.json`` say which they hold).

Two known issues of released reference code are deliberately not repeated:

* dividing per-object sums by the padded part count ``P`` (some released variants;
  here always the true number of valid parts);
* taking ``|a - b|`` of Euler angles without wrapping, so that 179° vs -179° counts as
  358° (older releases). Here angle differences are wrapped to ``[-180°, 180°]``, as the
  current reference does (``min(|d|, 360 - |d|)``).

Rotation errors are reported both as the benchmark's Euler-angle RMSE/MAE (degrees,
per-axis differences, convention ``"xyz"`` = the reference's ``qeuler(q, "zyx")``, i.e.
``R = Rz Ry Rx``) and as geodesic angles (degrees), which do not depend on a convention
and have no gimbal artefacts. ``mae_r_geo`` is the reference's ``rot_geodesic_dist``;
``rmse_r_geo`` (not a reference metric) is the root of the mean squared angle over the
valid parts of an object (a per-part RMSE of one angle would be the angle itself).

Mixed float dtypes (a float32 prediction against float64 ground truth) are computed in the
widest one, never rounded to the narrower; every pose and point input must be floating and
on one device (``ValueError`` otherwise).

Empty input: every object needs at least one valid part and every part at least one
point (``ValueError`` otherwise); a batch of ``B = 0`` objects gives empty ``(0,)``
results with ``reduction="none"`` and raises ``ValueError`` with ``reduction="mean"``
(the mean over no objects is undefined).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geo3d._validation import check_finite, promote_floats

__all__ = [
    "transform_parts",
    "anchor_parts",
    "align_to_anchor",
    "part_chamfer",
    "part_accuracy",
    "shape_chamfer",
    "rotation_errors",
    "translation_errors",
    "assembly_metrics",
]


def _check(name: str, x: Tensor, shape: tuple, what: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {what}, got {type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, x.shape, strict=True)):
        raise ValueError(f"{name}: expected shape {what}, got {tuple(x.shape)}")


def _check_points(points: Tensor) -> None:
    _check("points", points, (None, None, None, 3), "(B, P, N, 3)")
    if points.device.type == "meta":  # shapes only: no values to score (or to check)
        raise ValueError("points: expected a tensor on a device that computes, got one on "
                         "'meta'")
    if points.shape[2] == 0:
        raise ValueError(f"points: expected at least one point per part (N >= 1), "
                         f"got shape {tuple(points.shape)}")


def _check_valid(valid: Tensor, B: int, P: int) -> Tensor:
    _check("valid", valid, (B, P), f"(B, P) = {(B, P)}")
    if valid.device.type == "meta":
        raise ValueError("valid: expected a tensor on a device that computes, got one on "
                         "'meta'")
    if valid.dtype != torch.bool:
        valid = valid != 0
    if not bool(valid.any(dim=1).all()):
        raise ValueError("valid: expected at least one valid part in every object, got an "
                         "object without any")
    return valid


def _valid_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean over dim 1 of ``x (B, P)`` over valid parts only (true part count)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(valid, x, zero)  # padded NaN/inf cannot leak
    return x.sum(1) / valid.sum(1).to(x.dtype)


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        if x.shape[0] == 0:
            raise ValueError("reduction: 'mean' over an empty batch (B = 0) is undefined; "
                             "use reduction='none'")
        return x.mean()
    if reduction == "none":
        return x
    raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def _recentre(pred_trans: Tensor, gt_trans: Tensor, valid: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
    """Subtract a common per-object origin (mean of the true translations, in float64)
    from both translations: chamfer distances do not change, but float32 inputs far from
    the origin (e.g. 1e5) no longer lose the object-scale digits."""
    w = torch.ones(gt_trans.shape[:2], dtype=torch.float64, device=gt_trans.device) \
        if valid is None else valid.to(torch.float64)
    g64 = torch.where(w[..., None] > 0, gt_trans.to(torch.float64), 0.0)
    o = g64.sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)[..., None]
    return ((pred_trans.to(torch.float64) - o).to(pred_trans.dtype),
            (gt_trans.to(torch.float64) - o).to(gt_trans.dtype))


def _zero_padded(points: Tensor, valid: Tensor) -> Tensor:
    """Padded parts may hold anything (NaN padding): replace them by zeros."""
    return torch.where(valid[:, :, None, None], points,
                       torch.zeros((), dtype=points.dtype, device=points.device))


def _promote(points: Tensor, pred_rot: Tensor, pred_trans: Tensor, gt_rot: Tensor,
             gt_trans: Tensor, valid: Tensor | None = None) -> list[Tensor]:
    """Mixed float dtypes (a float32 prediction against float64 ground truth) are scored in
    the widest one (ValueError for a non-floating input or mixed devices); NaN/inf in the
    parts that count (``valid``; all without it) is a ValueError naming the argument."""
    B, P = points.shape[:2]
    for name, x, tail in (("pred_rot", pred_rot, (3, 3)), ("gt_rot", gt_rot, (3, 3)),
                          ("pred_trans", pred_trans, (3,)), ("gt_trans", gt_trans, (3,))):
        want = (B, P, *tail)
        _check(name, x, want, f"(B, P, {', '.join(map(str, tail))}) = {want}")
    out = promote_floats(points=points, pred_rot=pred_rot, pred_trans=pred_trans,
                         gt_rot=gt_rot, gt_trans=gt_trans)
    for name, x in zip(("points", "pred_rot", "pred_trans", "gt_rot", "gt_trans"), out,
                       strict=True):
        check_finite(name, x, valid)
    return out


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0 <= float(threshold) < float("inf"):
        raise ValueError(f"threshold: expected a finite number >= 0, got {threshold!r}")
    return float(threshold)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def transform_parts(points: Tensor, rot: Tensor, trans: Tensor) -> Tensor:
    """Apply per-part poses: ``rot @ p + trans``.

    Args:
        points: part points, shape :math:`(*, P, N, 3)`.
        rot: rotations, shape :math:`(*, P, 3, 3)`.
        trans: translations, shape :math:`(*, P, 3)`.

    Returns:
        Transformed points, shape :math:`(*, P, N, 3)` (a new tensor), in the widest of
        the three float dtypes.

    Raises:
        ValueError: shapes that do not match exactly (no broadcasting), a non-floating
            input, inputs on different devices.
    """
    if points.shape[-1] != 3 or points.dim() < 3:
        raise ValueError(f"points: expected shape (*, P, N, 3), got {tuple(points.shape)}")
    if rot.shape[-2:] != (3, 3) or rot.shape[:-2] != points.shape[:-2]:
        raise ValueError(
            f"rot: expected shape {tuple(points.shape[:-2]) + (3, 3)}, got {tuple(rot.shape)}"
        )
    if trans.shape != points.shape[:-2] + (3,):
        raise ValueError(
            f"trans: expected shape {tuple(points.shape[:-2]) + (3,)}, got {tuple(trans.shape)}"
        )
    points, rot, trans = promote_floats(points=points, rot=rot, trans=trans)
    return points @ rot.transpose(-1, -2) + trans[..., None, :]


def anchor_parts(points: Tensor, valid: Tensor, point_mask: Tensor | None = None) -> Tensor:
    """Index of the anchor (largest valid) part of each object.

    "Largest" is measured by the part's mean squared distance of its points to their
    centroid (squared radius of gyration), a rotation- and translation-invariant size that
    needs only the points. Ties go to the lowest index.

    Args:
        points: part points, shape :math:`(B, P, N, 3)`.
        valid: valid-part mask, shape :math:`(B, P)` (bool).
        point_mask: optional valid-point mask, shape :math:`(B, P, N)` (bool; masked
            points are ignored; a valid part without unmasked points has size 0).

    Returns:
        Anchor indices, shape :math:`(B,)` (long).

    Raises:
        ValueError: bad shapes (``point_mask`` must match ``points`` exactly), or an
            object without valid parts.

    Example:
        >>> import torch
        >>> pts = torch.randn(1, 3, 8, 3, generator=torch.Generator().manual_seed(0))
        >>> pts[0, 1] *= 10
        >>> anchor_parts(pts, torch.ones(1, 3, dtype=torch.bool)).tolist()
        [1]
    """
    _check_points(points)
    B, P, N, _ = points.shape
    valid = _check_valid(valid, B, P)
    if point_mask is None:
        point_mask = torch.ones(B, P, N, dtype=torch.bool, device=points.device)
    _check("point_mask", point_mask, (B, P, N), f"(B, P, N) = {(B, P, N)}")
    if point_mask.dtype != torch.bool:
        point_mask = point_mask != 0
    # masked points may hold anything (NaN padding): they must not enter
    points = torch.where(point_mask[..., None], points, torch.zeros((), dtype=points.dtype,
                                                                     device=points.device))
    points = points.to(torch.float64)  # uncentred float32 parts: no cancellation
    w = point_mask.to(points.dtype)[..., None]
    cnt = w.sum(2).clamp_min(1.0)
    c = (points * w).sum(2) / cnt
    size = (((points - c[:, :, None]) ** 2) * w).sum((2, 3)) / cnt[..., 0]
    size = torch.where(valid, size, torch.full_like(size, -1.0))
    return size.argmax(dim=1)


def align_to_anchor(
    pred_rot: Tensor, pred_trans: Tensor, gt_rot: Tensor, gt_trans: Tensor, anchor: Tensor
) -> tuple[Tensor, Tensor]:
    """Protocol (b): move a predicted assembly so that its anchor part matches the truth.

    The rigid transform ``A = T_gt[a] · T_pred[a]^{-1}`` is applied to every predicted
    pose, so the anchor is scored as exact and every other part relative to it. This
    removes the unobservable global orientation of the assembly.

    Args:
        pred_rot, gt_rot: shape :math:`(B, P, 3, 3)`.
        pred_trans, gt_trans: shape :math:`(B, P, 3)`.
        anchor: anchor part index per object, shape :math:`(B,)`.

    Returns:
        ``(rot (B, P, 3, 3), trans (B, P, 3))``, the aligned predicted poses (new
        tensors, in the widest float dtype of the inputs).

    Raises:
        ValueError: bad shapes, or an ``anchor`` index outside ``[0, P)``.
    """
    _check("pred_rot", pred_rot, (None, None, 3, 3), "(B, P, 3, 3)")
    B, P = pred_rot.shape[:2]
    _check("gt_rot", gt_rot, (B, P, 3, 3), f"(B, P, 3, 3) = {(B, P, 3, 3)}")
    _check("pred_trans", pred_trans, (B, P, 3), f"(B, P, 3) = {(B, P, 3)}")
    _check("gt_trans", gt_trans, (B, P, 3), f"(B, P, 3) = {(B, P, 3)}")
    _check("anchor", anchor, (B,), f"(B,) = {(B,)}")
    if anchor.dtype.is_floating_point or anchor.dtype == torch.bool:
        raise ValueError(f"anchor: expected an integer tensor, got {anchor.dtype}")
    if B and not bool(((anchor >= 0) & (anchor < P)).all()):
        raise ValueError(f"anchor: expected indices in [0, {P}), got {anchor.tolist()}")
    ar = torch.arange(B, device=anchor.device)
    f64 = torch.float64  # translations far from the origin: no float32 cancellation
    Ra, ta = pred_rot[ar, anchor].to(f64), pred_trans[ar, anchor].to(f64)
    Ga, ga = gt_rot[ar, anchor].to(f64), gt_trans[ar, anchor].to(f64)
    RA = Ga @ Ra.transpose(-1, -2)  # (B, 3, 3)
    tA = ga - (RA @ ta[..., None])[..., 0]
    rot = RA[:, None] @ pred_rot.to(f64)
    trans = (RA[:, None] @ pred_trans.to(f64)[..., None])[..., 0] + tA[:, None]
    dtype = torch.promote_types(torch.promote_types(pred_rot.dtype, pred_trans.dtype),
                                torch.promote_types(gt_rot.dtype, gt_trans.dtype))
    return rot.to(dtype), trans.to(dtype)


def part_chamfer(
    points: Tensor,
    pred_rot: Tensor,
    pred_trans: Tensor,
    gt_rot: Tensor,
    gt_trans: Tensor,
) -> Tensor:
    """Per-part chamfer distance between the predicted and true placement of each part.

    Squared-distance convention of the benchmark: ``mean_x min_y |x-y|² + mean_y min_x
    |x-y|²``.

    Args:
        points: centred part points, shape :math:`(B, P, N, 3)`.
        pred_rot, gt_rot: shape :math:`(B, P, 3, 3)`.
        pred_trans, gt_trans: shape :math:`(B, P, 3)`.

    Returns:
        Chamfer distance per part, shape :math:`(B, P)` (padded parts included; mask them).

    Raises:
        ValueError: bad shapes, ``N = 0``, or non-finite coordinates (padded parts too:
            use :func:`part_accuracy`, which ignores them).
    """
    from geo3d.ops import chamfer_distance

    _check_points(points)
    B, P, N, _ = points.shape
    points, pred_rot, pred_trans, gt_rot, gt_trans = _promote(points, pred_rot, pred_trans,
                                                              gt_rot, gt_trans)
    pred_trans, gt_trans = _recentre(pred_trans, gt_trans)
    x = transform_parts(points, pred_rot, pred_trans).reshape(B * P, N, 3)
    y = transform_parts(points, gt_rot, gt_trans).reshape(B * P, N, 3)
    cd = chamfer_distance(x, y, squared=True, reduction=None, point_reduction="mean")
    return cd.reshape(B, P)


def part_accuracy(
    points: Tensor,
    pred_rot: Tensor,
    pred_trans: Tensor,
    gt_rot: Tensor,
    gt_trans: Tensor,
    valid: Tensor,
    threshold: float = 0.01,
    reduction: str = "mean",
) -> Tensor:
    """Part accuracy (PA): fraction of valid parts whose :func:`part_chamfer` < threshold.

    Args:
        points: shape :math:`(B, P, N, 3)`; poses as in :func:`part_chamfer`.
        valid: shape :math:`(B, P)` bool.
        threshold: chamfer threshold (benchmark: 0.01 on squared distances).
        reduction: ``"mean"`` over objects, or ``"none"`` for shape :math:`(B,)`.

    Returns:
        Fraction of correct valid parts per object, averaged over objects (reference
        ``calc_part_acc``); padded parts (any values) are ignored.

    Raises:
        ValueError: bad shapes, an object without valid parts, ``N = 0``, a bad
            ``reduction`` or ``threshold`` (not a finite number >= 0), NaN/inf in a valid
            part, or ``reduction="mean"`` with ``B = 0``.
    """
    _check_points(points)
    B, P = points.shape[:2]
    valid = _check_valid(valid, B, P)
    _check_reduction(reduction)
    threshold = _check_threshold(threshold)
    points, pred_rot, pred_trans, gt_rot, gt_trans = _promote(points, pred_rot, pred_trans,
                                                              gt_rot, gt_trans, valid)
    # padded parts may hold anything (NaN padding): identity poses on zero points there
    points = _zero_padded(points, valid)
    eye = torch.eye(3, dtype=points.dtype, device=points.device)
    keep = valid[..., None, None]
    pred_rot, gt_rot = torch.where(keep, pred_rot, eye), torch.where(keep, gt_rot, eye)
    pred_trans = torch.where(valid[..., None], pred_trans, 0.0)
    gt_trans = torch.where(valid[..., None], gt_trans, 0.0)
    cd = part_chamfer(points, pred_rot, pred_trans, gt_rot, gt_trans)
    ok = (cd < threshold).to(cd.dtype)
    return _reduce(_valid_mean(ok, valid), reduction)


def shape_chamfer(
    points: Tensor,
    pred_rot: Tensor,
    pred_trans: Tensor,
    gt_rot: Tensor,
    gt_trans: Tensor,
    valid: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Shape chamfer distance between the predicted and the true assembly (valid parts only).

    Squared-distance convention, point means over the ``num_valid * N`` points of each
    object (padded parts never enter).

    Args:
        points: shape :math:`(B, P, N, 3)`; poses as in :func:`part_chamfer`.
        valid: shape :math:`(B, P)` bool.
        reduction: ``"mean"`` over objects, or ``"none"`` for shape :math:`(B,)`.

    Returns:
        Shape chamfer per object (squared distances), averaged over objects.

    Raises:
        ValueError: bad shapes, an object without valid parts, ``N = 0``, a bad
            ``reduction``, or ``reduction="mean"`` with ``B = 0``.
    """
    from geo3d.ops import chamfer_distance

    _check_points(points)
    B, P, N, _ = points.shape
    valid = _check_valid(valid, B, P)
    _check_reduction(reduction)
    points, pred_rot, pred_trans, gt_rot, gt_trans = _promote(points, pred_rot, pred_trans,
                                                              gt_rot, gt_trans, valid)
    pred_trans, gt_trans = _recentre(pred_trans, gt_trans, valid)
    points = _zero_padded(points, valid)
    x = transform_parts(points, pred_rot, pred_trans)
    y = transform_parts(points, gt_rot, gt_trans)
    # pack valid parts first so that each object is a prefix of length num_valid * N
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    idx = order[:, :, None, None].expand(B, P, N, 3)
    x = torch.gather(x, 1, idx).reshape(B, P * N, 3)
    y = torch.gather(y, 1, idx).reshape(B, P * N, 3)
    lengths = valid.sum(1) * N
    cd = chamfer_distance(
        x, y, x_lengths=lengths, y_lengths=lengths, squared=True, reduction=None,
        point_reduction="mean",
    )
    return _reduce(cd, reduction)


def rotation_errors(
    pred_rot: Tensor,
    gt_rot: Tensor,
    valid: Tensor,
    convention: str = "xyz",
    reduction: str = "mean",
) -> dict[str, Tensor]:
    """Rotation RMSE/MAE in degrees: Euler (benchmark aggregation) and geodesic.

    Euler: both rotations are converted to Euler angles (``convention``, scipy semantics,
    degrees; ``"xyz"`` is the reference's convention); per-axis differences ``d`` are
    wrapped to ``[-180, 180]``. Per part: ``rmse = sqrt(mean_axes d²)``,
    ``mae = mean_axes |d|``; each is then averaged over the valid parts of the object
    (reference ``rot_metrics``). ``rmse_r_euler_pooled`` is
    ``sqrt(mean over valid parts and axes of d²)`` instead. Geodesic: the angle ``a`` of
    ``predᵀ gt`` in degrees; ``mae_r_geo`` = mean of ``a`` over valid parts (reference
    ``rot_geodesic_dist``), ``rmse_r_geo = sqrt(mean a²)`` over valid parts.

    Args:
        pred_rot, gt_rot: shape :math:`(B, P, 3, 3)`.
        valid: shape :math:`(B, P)` bool (at least one True per object).
        convention: Euler convention (scipy semantics).
        reduction: ``"mean"`` over objects, or ``"none"`` for shape :math:`(B,)`.

    Returns:
        dict with ``rmse_r_euler, mae_r_euler, rmse_r_euler_pooled, rmse_r_geo,
        mae_r_geo`` (scalars, or :math:`(B,)` with ``reduction="none"``).

    Raises:
        ValueError: bad shapes, an object without valid parts, a bad ``reduction``, or
            ``reduction="mean"`` with ``B = 0``.

    Example:
        >>> import math, torch
        >>> c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
        >>> rx = torch.tensor([[1., 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
        >>> gt = torch.eye(3, dtype=torch.float64).expand(1, 2, 3, 3)
        >>> pred = torch.stack([torch.eye(3, dtype=torch.float64), rx])[None]
        >>> m = rotation_errors(pred, gt, torch.ones(1, 2, dtype=torch.bool))
        >>> round(m["rmse_r_euler"].item(), 2), round(m["rmse_r_euler_pooled"].item(), 2)
        (8.66, 12.25)
    """
    from geo3d.rotations import geodesic_distance, matrix_to_euler

    _check("pred_rot", pred_rot, (None, None, 3, 3), "(B, P, 3, 3)")
    B, P = pred_rot.shape[:2]
    _check("gt_rot", gt_rot, (B, P, 3, 3), f"(B, P, 3, 3) = {(B, P, 3, 3)}")
    valid = _check_valid(valid, B, P)
    _check_reduction(reduction)
    pred_rot, gt_rot = promote_floats(pred_rot=pred_rot, gt_rot=gt_rot)
    # padded parts may hold anything (zeros, NaN): score them as identity vs identity
    eye = torch.eye(3, dtype=pred_rot.dtype, device=pred_rot.device)
    pred_rot = torch.where(valid[..., None, None], pred_rot, eye)
    gt_rot = torch.where(valid[..., None, None], gt_rot, eye)
    e1 = torch.rad2deg(matrix_to_euler(pred_rot, convention))
    e2 = torch.rad2deg(matrix_to_euler(gt_rot, convention))
    d = torch.remainder(e1 - e2 + 180.0, 360.0) - 180.0  # wrapped to [-180, 180)
    geo = torch.rad2deg(geodesic_distance(pred_rot, gt_rot))
    sq = (d**2).mean(-1)  # (B, P) per-part mean squared Euler error
    out = {
        "rmse_r_euler": _valid_mean(sq.sqrt(), valid),
        "mae_r_euler": _valid_mean(d.abs().mean(-1), valid),
        "rmse_r_euler_pooled": _valid_mean(sq, valid).sqrt(),
        "rmse_r_geo": _valid_mean(geo**2, valid).sqrt(),
        "mae_r_geo": _valid_mean(geo, valid),
    }
    return {k: _reduce(v, reduction) for k, v in out.items()}


def translation_errors(
    pred_trans: Tensor, gt_trans: Tensor, valid: Tensor, reduction: str = "mean"
) -> dict[str, Tensor]:
    """Translation RMSE/MAE with the benchmark's aggregation (reference ``trans_metrics``).

    Per part, with ``d = pred - gt`` (3 components): ``rmse = sqrt(mean_xyz d²)``,
    ``mae = mean_xyz |d|``; each is averaged over the valid parts of an object, then over
    objects. ``rmse_t_pooled = sqrt(mean over valid parts and components of d²)``.

    Args:
        pred_trans, gt_trans: shape :math:`(B, P, 3)`.
        valid: shape :math:`(B, P)` bool (at least one True per object).
        reduction: ``"mean"`` over objects, or ``"none"`` for shape :math:`(B,)`.

    Returns:
        dict with ``rmse_t, mae_t, rmse_t_pooled`` (input units).

    Raises:
        ValueError: bad shapes, an object without valid parts, a bad ``reduction``, or
            ``reduction="mean"`` with ``B = 0``.

    Example:
        >>> import torch
        >>> gt = torch.zeros(1, 2, 3)
        >>> pred = torch.tensor([[[0., 0, 0], [3, 0, 0]]])
        >>> m = translation_errors(pred, gt, torch.ones(1, 2, dtype=torch.bool))
        >>> round(m["rmse_t"].item(), 4), round(m["rmse_t_pooled"].item(), 4)
        (0.866, 1.2247)
    """
    _check("pred_trans", pred_trans, (None, None, 3), "(B, P, 3)")
    B, P = pred_trans.shape[:2]
    _check("gt_trans", gt_trans, (B, P, 3), f"(B, P, 3) = {(B, P, 3)}")
    valid = _check_valid(valid, B, P)
    _check_reduction(reduction)
    pred_trans, gt_trans = promote_floats(pred_trans=pred_trans, gt_trans=gt_trans)
    d = pred_trans - gt_trans
    sq = (d**2).mean(-1)
    out = {
        "rmse_t": _valid_mean(sq.sqrt(), valid),
        "mae_t": _valid_mean(d.abs().mean(-1), valid),
        "rmse_t_pooled": _valid_mean(sq, valid).sqrt(),
    }
    return {k: _reduce(v, reduction) for k, v in out.items()}


def assembly_metrics(
    points: Tensor,
    valid: Tensor,
    pred_rot: Tensor,
    pred_trans: Tensor,
    gt_rot: Tensor,
    gt_trans: Tensor,
    protocol: str = "absolute",
    anchor: Tensor | None = None,
    threshold: float = 0.01,
    convention: str = "xyz",
    reduction: str = "mean",
) -> dict[str, Tensor]:
    """All assembly metrics under one protocol.

    Protocols:
        ``"absolute"`` — (a) Breaking Bad's metrics, poses compared in the ground-truth
        frame as given. The global orientation of an assembly cannot be inferred from
        randomly rotated pieces alone, so this rewards guessing the dataset's canonical
        frame. ``"anchor"`` — (b) predictions are first moved by the rigid transform that
        maps the predicted anchor pose onto the true one (:func:`align_to_anchor`,
        anchor = largest part by :func:`anchor_parts` unless given); all parts, anchor
        included, are then scored.

    Args:
        points: centred part points, shape :math:`(B, P, N, 3)`.
        valid: shape :math:`(B, P)` bool.
        pred_rot, gt_rot: shape :math:`(B, P, 3, 3)`.
        pred_trans, gt_trans: shape :math:`(B, P, 3)`.
        anchor: optional anchor indices, shape :math:`(B,)`.

    Returns:
        dict with ``part_acc, shape_cd, rmse_r_euler, mae_r_euler, rmse_r_geo, mae_r_geo,
        rmse_t, mae_t`` (benchmark aggregation, see the module docstring) and
        ``rmse_r_euler_pooled, rmse_t_pooled`` (scalars, or :math:`(B,)` with
        ``reduction="none"``). Rotation errors are in degrees.

    Raises:
        ValueError: bad shapes, an object without valid parts, a part without points,
            a bad ``protocol``/``reduction``/``anchor``, or ``reduction="mean"`` with
            ``B = 0``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> pts = torch.randn(2, 3, 16, 3, generator=g)
        >>> valid = torch.tensor([[True, True, True], [True, True, False]])
        >>> rot, trans = torch.eye(3).expand(2, 3, 3, 3), torch.zeros(2, 3, 3)
        >>> m = assembly_metrics(pts, valid, rot, trans, rot, trans, protocol="anchor")
        >>> m["part_acc"].item(), m["rmse_t"].item()
        (1.0, 0.0)
    """
    _check_points(points)
    B, P = points.shape[:2]
    valid = _check_valid(valid, B, P)
    _check_reduction(reduction)
    _check("pred_trans", pred_trans, (B, P, 3), f"(B, P, 3) = {(B, P, 3)}")
    _check("gt_trans", gt_trans, (B, P, 3), f"(B, P, 3) = {(B, P, 3)}")
    threshold = _check_threshold(threshold)
    points, pred_rot, pred_trans, gt_rot, gt_trans = _promote(points, pred_rot, pred_trans,
                                                              gt_rot, gt_trans, valid)
    # one object-centred origin for everything below (float64 offsets, see _recentre)
    pred_trans, gt_trans = _recentre(pred_trans, gt_trans, valid)
    if protocol == "anchor":
        if anchor is None:
            anchor = anchor_parts(points, valid)
        pred_rot, pred_trans = align_to_anchor(pred_rot, pred_trans, gt_rot, gt_trans, anchor)
    elif protocol != "absolute":
        raise ValueError(f"protocol: expected 'absolute' or 'anchor', got {protocol!r}")
    out = {
        "part_acc": part_accuracy(
            points, pred_rot, pred_trans, gt_rot, gt_trans, valid, threshold, "none"
        ),
        "shape_cd": shape_chamfer(points, pred_rot, pred_trans, gt_rot, gt_trans, valid, "none"),
    }
    out.update(rotation_errors(pred_rot, gt_rot, valid, convention, "none"))
    out.update(translation_errors(pred_trans, gt_trans, valid, "none"))
    return {k: _reduce(v, reduction) for k, v in out.items()}

