"""Training losses for shape assembly (averaged over valid parts, then over objects)."""

from __future__ import annotations

import torch
from torch import Tensor

from geo3d.eval import align_to_anchor, anchor_parts, part_chamfer, shape_chamfer

__all__ = ["assembly_loss", "select_hypotheses"]


def _valid_mean(x: Tensor, valid: Tensor) -> Tensor:
    x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum(1) / valid.sum(1).clamp_min(1).to(x.dtype)


def select_hypotheses(
    pred: dict[str, Tensor],
    gt_rot: Tensor,
    gt_trans: Tensor,
    w_rot: float = 1.0,
    w_trans: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Winner-takes-all selection for a multi-hypothesis pose head.

    Args:
        pred: model output with ``hyp_rot (B, P, K, 3, 3)``, ``hyp_trans (B, P, K, 3)`` and
            ``hyp_logits (B, P, K)``.
        gt_rot: shape :math:`(B, P, 3, 3)`; gt_trans: shape :math:`(B, P, 3)`.
        w_rot, w_trans: weights of the geodesic and squared translation errors in the
            per-hypothesis cost.

    Returns:
        ``(rot, trans, cost)``: the lowest-cost hypothesis of every part ``(B, P, 3, 3)``,
        ``(B, P, 3)`` (differentiable), and the per-hypothesis cost ``(B, P, K)``.
    """
    from geo3d.rotations import geodesic_distance

    HR, Ht = pred["hyp_rot"], pred["hyp_trans"]
    cost = w_rot * geodesic_distance(HR, gt_rot[:, :, None]) + w_trans * (
        (Ht - gt_trans[:, :, None]) ** 2
    ).sum(-1)
    k = cost.detach().argmin(-1)  # (B, P)
    rot = torch.gather(HR, 2, k[..., None, None, None].expand(*k.shape, 1, 3, 3))[:, :, 0]
    trans = torch.gather(Ht, 2, k[..., None, None].expand(*k.shape, 1, 3))[:, :, 0]
    return rot, trans, cost


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
    hypotheses: dict[str, Tensor] | None = None,
    w_cls: float = 1.0,
    w_all: float = 0.05,
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
        hypotheses: optional multi-hypothesis output (see :func:`select_hypotheses`). Then
            the terms above use each part's lowest-cost hypothesis (winner takes all), a
            cross-entropy term teaches the scores to pick it (``w_cls``), and the mean
            cost of all hypotheses (``w_all``) keeps the others from dying. Hypotheses
            are selected in the absolute frame.

    Returns:
        ``(loss, terms)``: scalar loss and a dict of detached scalar terms.
    """
    from geo3d.rotations import geodesic_distance

    extra: dict[str, Tensor] = {}
    if hypotheses is not None:
        pred_rot, pred_trans, cost = select_hypotheses(hypotheses, gt_rot, gt_trans, w_rot, w_trans)
        k = cost.detach().argmin(-1)
        logits = hypotheses["hyp_logits"]
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), k.flatten(), reduction="none"
        ).view(k.shape)
        extra["cls"] = _valid_mean(ce, valid).mean()
        extra["all"] = _valid_mean(cost.mean(-1), valid).mean()
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
    if extra:
        loss = loss + w_cls * extra["cls"] + w_all * extra["all"]
        terms.update(extra)
    return loss, {k: v.detach() for k, v in terms.items()}
