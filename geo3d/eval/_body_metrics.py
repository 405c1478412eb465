"""Human-body fitting metrics: V2V, MPJPE and per-point part accuracy (batched, any device).

The metrics of ArtEq (Feng et al., "Generalizing Neural Human Fitting to Unseen Poses With
Articulated SE(3) Equivariance", ICCV 2023, arXiv:2304.10528; reference code
HavenFeng/ArtEq, ``test.py``):

- **V2V**: mean Euclidean distance between corresponding vertices of the predicted and the
  ground-truth mesh, **no alignment** (no root, rigid or Procrustes alignment).
- **MPJPE**: mean Euclidean distance between corresponding joints, also without alignment by
  default. ArtEq evaluates the 45 joints smplx returns for SMPL (24 skeleton joints + 21
  keypoints picked from vertices: nose, eyes, ears, toes, heels, finger tips). What
  :func:`geo3d.body.pose_body` returns depends on the model: 45 joints for the official SMPL
  files, 24 + 5 (nose, eyes, ears) = 29 for the tiny body and the Anny-derived model (their
  files define no toe/finger-tip vertices). ``joints[:, :24]`` are the 24 SMPL joints in
  every case.
- **Part accuracy**: fraction of points whose predicted part label equals the ground truth.

Units: V2V and MPJPE are in the units of the input (metres for :mod:`geo3d.body` meshes);
the ArtEq app and its results JSON report centimetres (``100 * v2v_error(...)`` on metres).
Every metric returns one value per batch element (shape ``(B,)``; any leading batch shape
is accepted); average over the batch yourself (``.mean()``).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from geo3d._validation import check_finite, promote_floats

__all__ = ["v2v_error", "mpjpe", "part_accuracy_points"]


def _check_pair(pname: str, gname: str, pred: Tensor, gt: Tensor, what: str
                ) -> tuple[Tensor, Tensor]:
    for name, x in ((pname, pred), (gname, gt)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected a tensor of shape {what}, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[-1] != 3:
            raise ValueError(f"{name}: expected shape {what}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating tensor, got {x.dtype}")
    if pred.shape != gt.shape:
        raise ValueError(f"{gname}: expected shape {tuple(pred.shape)} (as {pname}), got "
                         f"{tuple(gt.shape)}")
    if pred.shape[-2] == 0:
        raise ValueError(f"{pname}: expected at least one point (shape {what}), got "
                         f"{tuple(pred.shape)}")
    # mixed float dtypes: computed in the wider one (float64 fits against float32 truth)
    pred, gt = promote_floats(**{pname: pred, gname: gt})
    # a NaN would silently poison the mean (value checks: geo3d.rotations.set_value_checks)
    check_finite(pname, pred)
    check_finite(gname, gt)
    return pred, gt


def v2v_error(pred_vertices: Tensor, gt_vertices: Tensor) -> Tensor:
    """Mean per-vertex Euclidean distance (V2V), no alignment.

    .. math:: \\mathrm{V2V}_b = \\frac{1}{V} \\sum_v \\lVert \\hat v_{bv} - v_{bv} \\rVert_2

    Args:
        pred_vertices: predicted mesh vertices, shape :math:`(*, V, 3)`.
        gt_vertices: ground-truth vertices in the same order, shape :math:`(*, V, 3)`, on
            the same device (float dtypes may differ: the wider one is used).

    Returns:
        Shape :math:`(*)`: mean distance per mesh, in the input units (ArtEq reports cm:
        multiply metres by 100), in the wider of the two dtypes.

    Raises:
        ValueError: a non-tensor or non-floating input, a last dimension other than 3,
            mismatched shapes or devices, ``V = 0``, NaN/inf coordinates (while
            value checks are on: :func:`geo3d.rotations.set_value_checks`).

    Example:
        >>> gt = torch.zeros(1, 4, 3)
        >>> v2v_error(gt + torch.tensor([3.0, 4.0, 0.0]), gt)
        tensor([5.])

    Reference: ArtEq (arXiv:2304.10528), Sec. 4 ("V2V"); reference code HavenFeng/ArtEq.
    """
    pred_vertices, gt_vertices = _check_pair("pred_vertices", "gt_vertices", pred_vertices,
                                             gt_vertices, "(*, V, 3)")
    return (pred_vertices - gt_vertices).norm(dim=-1).mean(-1)


def mpjpe(
    pred_joints: Tensor, gt_joints: Tensor, align: str = "none", root_index: int = 0
) -> Tensor:
    """Mean per-joint position error (MPJPE).

    Args:
        pred_joints: predicted joints, shape :math:`(*, J, 3)`.
        gt_joints: ground-truth joints, same shape and device (float dtypes may differ: the
            wider one is used).
        align: ``"none"`` (default; ArtEq's protocol: absolute positions, so translation
            errors count) or ``"root"``: subtract joint ``root_index`` of each skeleton from
            its joints first (root-relative MPJPE, common in monocular pose estimation).
        root_index: the root joint for ``align="root"`` (SMPL: 0 = pelvis).

    Returns:
        Shape :math:`(*)`: mean joint distance in the input units (ArtEq: cm).

    Which joints: ``joints[:, :24]`` of :func:`geo3d.body.pose_body` output are SMPL's 24; the
    full ``joints`` are smplx's set (45 for official SMPL files, as ArtEq evaluates; 29 for
    the tiny and Anny-derived models, see the module docs).

    Raises:
        ValueError: as :func:`v2v_error` (naming ``pred_joints``/``gt_joints``; NaN/inf
            included), an unknown
            ``align``, or ``root_index`` outside ``[0, J)``.

    Example:
        >>> gt = torch.zeros(2, 24, 3)
        >>> mpjpe(gt + 1.0, gt, align="root")
        tensor([0., 0.])

    Reference: ArtEq (arXiv:2304.10528), Sec. 4 ("MPJPE"); Ionescu et al., "Human3.6M",
    TPAMI 2014 (DOI 10.1109/TPAMI.2013.248) for the metric.
    """
    pred_joints, gt_joints = _check_pair("pred_joints", "gt_joints", pred_joints, gt_joints,
                                         "(*, J, 3)")
    if align not in ("none", "root"):
        raise ValueError(f"align: expected 'none' or 'root', got {align!r}")
    J = pred_joints.shape[-2]
    if align == "root":
        if not isinstance(root_index, numbers.Integral) or isinstance(root_index, (bool, np.bool_)) \
                or not 0 <= int(root_index) < J:
            raise ValueError(f"root_index: expected an int in [0, {J}), got {root_index!r}")
        root_index = int(root_index)
        pred_joints = pred_joints - pred_joints[..., root_index : root_index + 1, :]
        gt_joints = gt_joints - gt_joints[..., root_index : root_index + 1, :]
    return (pred_joints - gt_joints).norm(dim=-1).mean(-1)


def part_accuracy_points(
    pred_labels: Tensor, gt_labels: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Per-point part-segmentation accuracy: fraction of (valid) points labelled correctly.

    Not the assembly metric :func:`geo3d.eval.part_accuracy` (fraction of correctly placed
    fracture pieces).

    Args:
        pred_labels: predicted part indices, integer tensor of shape :math:`(*, N)` (e.g.
            ``part_logits.argmax(-1)``).
        gt_labels: ground-truth indices, integer tensor of the same shape.
        mask: optional bool :math:`(*, N)`; only ``True`` points count (padding, points
            without a label).

    Points whose ground-truth **or** predicted label is negative never count (neither
    correct nor wrong): ``-1`` is the padding of ragged batches (e.g. ``FitResult.part_labels``
    of a list of scans) and of unlabelled points, so two paddings are not a match.

    Returns:
        Float32 (float64 never needed: a count ratio) tensor of shape :math:`(*)` in
        ``[0, 1]``; NaN for a row without any valid point (``N = 0``, an all-False mask or
        only negative labels).

    Raises:
        ValueError: non-tensor, floating or bool labels, fewer than 1 dimension, mismatched
            shapes or devices, a non-bool ``mask`` or one of the wrong shape.

    Example:
        >>> part_accuracy_points(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 2]]))
        tensor([0.7500])
        >>> part_accuracy_points(torch.tensor([[0, 1, -1]]), torch.tensor([[0, 2, -1]]))
        tensor([0.5000])

    Reference: ArtEq (arXiv:2304.10528), Sec. 4 (part segmentation accuracy).
    """
    for name, x in (("pred_labels", pred_labels), ("gt_labels", gt_labels)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected an integer tensor of shape (B, N), got "
                             f"{type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or x.dim() < 1:
            raise ValueError(f"{name}: expected an integer tensor of shape (B, N), got dtype "
                             f"{x.dtype} shape {tuple(x.shape)}")
    if pred_labels.shape != gt_labels.shape or pred_labels.device != gt_labels.device:
        raise ValueError(f"gt_labels: expected shape {tuple(pred_labels.shape)} on "
                         f"{pred_labels.device} (as pred_labels), got {tuple(gt_labels.shape)} "
                         f"on {gt_labels.device}")
    correct = (pred_labels == gt_labels).to(torch.float32)
    if mask is None:
        valid = torch.ones_like(correct)
    else:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(pred_labels.shape)}, "
                             f"got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != pred_labels.shape or mask.device != pred_labels.device:
            raise ValueError(f"mask: expected shape {tuple(pred_labels.shape)} on "
                             f"{pred_labels.device}, got {tuple(mask.shape)} on {mask.device}")
        valid = mask.to(torch.float32)
    valid = valid * ((gt_labels >= 0) & (pred_labels >= 0)).to(torch.float32)
    return (correct * valid).sum(-1) / valid.sum(-1)
