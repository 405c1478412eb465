"""Training losses for shape assembly (averaged over valid parts, then over objects)."""

from __future__ import annotations

import torch
from torch import Tensor

from geo3d.eval import align_to_anchor, anchor_parts, part_chamfer, shape_chamfer

__all__ = ["assembly_loss"]


def _valid_mean(x: Tensor, valid: Tensor) -> Tensor:
    x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum(1) / valid.sum(1).clamp_min(1).to(x.dtype)


def assembly_loss(
    points: Tensor,
    valid: Tensor,
    pred_rot: Tensor,
    pred_trans: Tensor,
    gt_rot: Tensor,
    gt_trans: Tensor,
    w_rot: float = 1.0,
    w_trans: float = 1.0,
    w_part_cd: float = 1.0,
    w_shape_cd: float = 1.0,
    frame: str = "absolute",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Geodesic rotation + L2 translation + transformed-part chamfer + shape chamfer.

    Every term is averaged over the valid parts of an object and then over objects, so
    equal-sized shards of a batch average to the loss of the whole batch (what DDP needs).

    Args:
        points: centred part points, shape :math:`(B, P, N, 3)`.
        valid: shape :math:`(B, P)` bool.
        pred_rot, gt_rot: shape :math:`(B, P, 3, 3)`.
        pred_trans, gt_trans: shape :math:`(B, P, 3)`.
        w_rot, w_trans, w_part_cd, w_shape_cd: term weights.
        frame: ``"absolute"`` (ground-truth frame, as the paper) or ``"anchor"`` (predictions
            first aligned on the largest part, protocol (b), differentiably).

    Returns:
        ``(loss, terms)``: scalar loss and a dict of detached scalar terms.
    """
    from geo3d.rotations import geodesic_distance

    if frame == "anchor":
        anchor = anchor_parts(points, valid)
        pred_rot, pred_trans = align_to_anchor(pred_rot, pred_trans, gt_rot, gt_trans, anchor)
    elif frame != "absolute":
        raise ValueError(f"frame: expected 'absolute' or 'anchor', got {frame!r}")
    terms: dict[str, Tensor] = {}
    terms["rot"] = _valid_mean(geodesic_distance(pred_rot, gt_rot), valid).mean()
    terms["trans"] = _valid_mean(((pred_trans - gt_trans) ** 2).sum(-1), valid).mean()
    zero = points.new_zeros(())
    terms["part_cd"] = (
        _valid_mean(part_chamfer(points, pred_rot, pred_trans, gt_rot, gt_trans), valid).mean()
        if w_part_cd
        else zero
    )
    terms["shape_cd"] = (
        shape_chamfer(points, pred_rot, pred_trans, gt_rot, gt_trans, valid) if w_shape_cd else zero
    )
    loss = (
        w_rot * terms["rot"]
        + w_trans * terms["trans"]
        + w_part_cd * terms["part_cd"]
        + w_shape_cd * terms["shape_cd"]
    )
    return loss, {k: v.detach() for k, v in terms.items()}
